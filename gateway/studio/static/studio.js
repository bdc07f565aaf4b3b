// The page's frame: tabs, the JSON API helper, and safe DOM building. Each view's script
// registers itself with veil.view(name, init); init(root) runs once, when its tab first opens.
// Text is only ever set with textContent: prompts and policies never become markup.
"use strict";
const veil = (() => {
  const views = {};
  const started = new Set();
  // What one view offers another: the playground keeps {policy, prompt} here (policy: the
  // file's path as /api/playground lists it), and the cases view reads it to add a case.
  const shared = {};

  async function api(path, body) {
    const init = body === undefined ? {method: "GET"} : {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (payload.error && payload.error.message) || response.statusText;
      throw new Error(message);
    }
    return payload;
  }

  // el("div", {class: "x", dataset: {k: "v"}}, "text", childNode, ...)
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function view(name, init) { views[name] = init; }

  function show() {
    const name = (location.hash || "#playground").slice(1);
    for (const section of document.querySelectorAll("section.view")) {
      section.hidden = section.id !== `view-${name}`;
    }
    for (const tab of document.querySelectorAll("#tabs a")) {
      tab.classList.toggle("active", tab.dataset.view === name);
    }
    const root = document.getElementById(`view-${name}`);
    if (root && views[name] && !started.has(name)) {
      started.add(name);
      views[name](root);
    }
  }

  window.addEventListener("hashchange", show);
  window.addEventListener("DOMContentLoaded", show);
  return {api, el, view, shared};
})();
