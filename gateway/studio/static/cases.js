// The Cases view: run a policy's cases file exactly as `veil policy test` does and show each
// case's expectation beside what the policy decided, the differing fields marked; and add the
// playground's prompt as a new case, expecting what the policy decides now once the user has
// seen it. Case names and prompts come from files and users: they are only ever set as text.
"use strict";
veil.view("cases", (root) => {
  const {el, api} = veil;
  const FIELDS = ["outcome", "rule", "requires", "found"];
  let files = [];
  let preview = {token: 0, expect: null};

  const picker = el("select", {id: "cases-policy", onchange: () => { describe(); refreshAdd(); }});
  const fileNote = el("span", {id: "cases-file", class: "muted"});
  const runButton = el("button", {id: "run-cases", type: "button", onclick: run}, "Run the cases");
  const summary = el("div", {id: "cases-summary"});
  const runError = el("div", {id: "cases-error", class: "error", role: "alert"});
  const rows = el("tbody");
  const table = el("table", {id: "cases-table", hidden: true},
    el("thead", {}, el("tr", {}, ["Result", "Case", "Expected", "Got"].map((h) => el("th", {}, h)))),
    rows);

  const source = el("p", {id: "case-source", class: "muted"});
  const promptView = el("pre", {id: "case-prompt", hidden: true});
  const nameInput = el("input", {id: "case-name", maxlength: "200", size: "48",
                                 placeholder: "what this case shows", oninput: allowAdd});
  const expectNote = el("div", {id: "case-expect"});
  const addButton = el("button", {id: "add-case", type: "button", onclick: add}, "Add case");
  const addError = el("div", {id: "case-add-error", class: "error", role: "alert"});
  const added = el("div", {id: "case-added", class: "ok"});

  root.append(
    el("div", {class: "panel"}, el("h2", {}, "Cases"),
      el("div", {class: "cases-controls"},
        el("label", {for: "cases-policy"}, "Policy "), picker, runButton, fileNote),
      runError, summary, table),
    el("div", {class: "panel", id: "case-add"}, el("h2", {}, "Add the playground prompt as a case"),
      source, promptView, expectNote,
      el("div", {class: "cases-controls"}, el("label", {for: "case-name"}, "Name "), nameInput,
        addButton),
      addError, added));

  const selected = () => files.find((f) => f.policy === picker.value);
  const basename = (path) => path.split(/[\\/]/).pop();
  const playground = () => {
    const shared = veil.shared.playground;
    return shared && typeof shared.prompt === "string" && shared.prompt.trim() ? shared : null;
  };

  async function loadFiles() {
    try {
      files = (await api("/api/cases/files")).files;
    } catch (error) {
      runError.textContent = error.message;
      return;
    }
    const keep = picker.value;
    picker.replaceChildren(...files.map((f) => el("option", {value: f.policy},
      `${basename(f.policy)} (${f.error ? "cases file broken" : f.exists ? `${f.count} cases`
                                                                 : "no cases file yet"})`)));
    const wanted = playground() && playground().policy;
    if (files.some((f) => f.policy === wanted)) picker.value = wanted;
    else if (files.some((f) => f.policy === keep)) picker.value = keep;
    describe();
  }

  function describe() {
    const file = selected();
    runButton.disabled = !file || (!file.exists && !file.error);
    fileNote.textContent = !file ? "the config lists no policies"
      : file.exists ? file.cases_file
      : `${file.cases_file} does not exist yet: adding the first case creates it`;
  }

  async function run() {
    const file = selected();
    if (!file) return;
    runButton.disabled = true;
    runError.textContent = "";
    summary.textContent = "Running…";
    summary.className = "muted";
    try {
      render(await api("/api/cases/run", {policy: file.policy}));
    } catch (error) {
      summary.textContent = "";
      table.hidden = true;
      runError.textContent = error.message;
    } finally {
      runButton.disabled = false;
    }
  }

  function render(result) {
    summary.textContent = `${result.passed} passed, ${result.failed} failed`;
    summary.className = result.failed ? "bad" : "ok";
    rows.replaceChildren(...result.cases.map(caseRow));
    table.hidden = false;
  }

  function caseRow(result) {
    const differing = new Set(result.diff.map((d) => d.field));
    return el("tr", {class: `case ${result.passed ? "pass" : "fail"}`, dataset: {name: result.name}},
      el("td", {}, el("span", {class: `badge ${result.passed ? "pass" : "fail"}`},
        result.passed ? "PASS" : "FAIL")),
      el("td", {class: "case-name"}, el("div", {}, result.name),
        el("div", {class: "case-text muted mono"}, result.prompt)),
      el("td", {class: "expected"}, fieldList(result.expected, differing, true)),
      el("td", {class: "got"}, fieldList(result.got, differing, false)));
  }

  function fieldList(values, differing, expected) {
    return el("dl", {class: "fields"}, FIELDS.flatMap((field) => {
      const attributes = {class: differing.has(field) ? "differs" : "", dataset: {field}};
      return [el("dt", attributes, field), el("dd", attributes, shown(field, values[field], expected))];
    }));
  }

  function shown(field, value, expected) {
    if (value === null || value === undefined) return "any";
    if (Array.isArray(value)) {
      if (value.length) return value.join(", ");
      return field === "found" && expected ? "nothing required" : "none";
    }
    return String(value);
  }

  async function refreshAdd() {
    const shared = playground();
    const file = selected();
    added.textContent = "";
    addError.textContent = "";
    preview = {token: preview.token + 1, expect: null};
    expectNote.replaceChildren();
    promptView.hidden = !shared;
    promptView.textContent = shared ? shared.prompt : "";
    if (!shared) {
      source.textContent = "Nothing to add yet: type a prompt in the Playground first, then " +
        "come back here to keep it as a case.";
    } else {
      source.textContent = shared.policy && file && shared.policy !== file.policy
        ? `The playground's prompt (tried there with ${basename(shared.policy)}; it will be ` +
          `added to ${basename(file.policy)}'s cases):`
        : "The playground's prompt:";
    }
    allowAdd();
    if (!shared || !file) return;
    const token = preview.token;
    try {
      const {expect} = await api("/api/cases/expectation", {policy: file.policy, prompt: shared.prompt});
      if (token !== preview.token) return;
      preview.expect = expect;
      expectNote.replaceChildren(
        el("p", {}, "The case will expect what this policy decides now. Check that this is " +
          "what it should decide before you add it:"),
        fieldList(expect, new Set(), true));
    } catch (error) {
      if (token === preview.token) addError.textContent = error.message;
    }
    allowAdd();
  }

  function allowAdd() {
    const ready = playground() && selected() && preview.expect;
    nameInput.disabled = !playground();
    addButton.disabled = !(ready && nameInput.value.trim());
  }

  async function add() {
    const shared = playground();
    const file = selected();
    if (!shared || !file || !preview.expect) return;
    addButton.disabled = true;
    addError.textContent = "";
    added.textContent = "";
    try {
      const result = await api("/api/cases/add", {policy: file.policy, name: nameInput.value,
                                                  prompt: shared.prompt, expect: preview.expect});
      added.textContent = `Added “${result.case.name}” to ${result.cases_file} ` +
        `(${result.count} cases).`;
      nameInput.value = "";
      await loadFiles();
      await run();
    } catch (error) {
      addError.textContent = error.message;
    }
    allowAdd();
  }

  window.addEventListener("hashchange", () => {
    if (location.hash === "#cases") loadFiles().then(refreshAdd);
  });
  loadFiles().then(refreshAdd);
});
