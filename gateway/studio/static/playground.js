// The playground: a prompt (or a whole chat) through a policy as the gateway takes it, each
// finding highlighted, the decision, what the model receives and a sample reply restored; and
// the policy's editor, validated as you type by the gateway's own loader, saved only when asked.
// Prompts and policy text are only ever set as text (veil.el, textContent), never as markup.
"use strict";
veil.view("playground", (root) => {
  const {el, api} = veil;
  const HUES = 8;
  const EXAMPLE_CHAT = JSON.stringify({
    model: "veil-demo",
    messages: [
      {role: "system", content: "You are the support desk's assistant."},
      {role: "user", content: "I'm Ann Lee, ann.lee@example.com. Please call me on +44 20 7946 0958."},
    ],
  }, null, 2);

  const state = {
    listing: null, policy: null, file: null, saved: {}, mode: "prompt",
    analyzeSeq: 0, validateSeq: 0, analyzeTimer: 0, validateTimer: 0,
  };

  // --- the page ---------------------------------------------------------------------------
  const policySelect = el("select", {id: "policy", "aria-label": "policy"});
  const modePrompt = el("button", {id: "mode-prompt", class: "secondary active", type: "button"}, "Prompt");
  const modeChat = el("button", {id: "mode-chat", class: "secondary", type: "button"}, "Chat JSON");
  const chatApi = el("select", {id: "chat-api", "aria-label": "API", hidden: true},
    el("option", {value: "chat_completions"}, "OpenAI chat/completions"),
    el("option", {value: "messages"}, "Anthropic messages"));
  const prompt = el("textarea", {id: "prompt", rows: 7, spellcheck: "false",
    placeholder: "Type or paste a prompt: names, e-mail addresses, card numbers…"});
  const analyzeButton = el("button", {id: "analyze", type: "button"}, "Analyze");
  const auto = el("input", {id: "auto", type: "checkbox", checked: true});
  const analyzeStatus = el("span", {id: "analyze-status", class: "muted"});
  const analyzeError = el("div", {id: "analyze-error", class: "error"});
  const highlighted = el("div", {id: "highlighted", class: "pg-highlighted"});
  const findings = el("tbody", {id: "findings"});
  const decision = el("div", {id: "decision"});
  const masked = el("pre", {id: "masked", class: "pg-out"});
  const replyModel = el("pre", {id: "reply-model", class: "pg-out"});
  const replyRestored = el("pre", {id: "reply-restored", class: "pg-out"});

  const fileSelect = el("select", {id: "policy-file", "aria-label": "file to edit"});
  const editorStatus = el("span", {id: "editor-status", class: "muted"});
  const gutter = el("div", {id: "policy-gutter", class: "pg-gutter", "aria-hidden": "true"});
  const editor = el("textarea", {id: "policy-editor", spellcheck: "false", wrap: "off",
    "aria-label": "policy YAML"});
  const errors = el("ul", {id: "policy-errors", class: "pg-errors"});
  const signingKey = el("input", {id: "signing-key", type: "text", autocomplete: "off",
    placeholder: "path to the Ed25519 private key on the studio host", hidden: true,
    "aria-label": "signing key"});
  const saveButton = el("button", {id: "save", type: "button", disabled: true}, "Save");
  const saveStatus = el("span", {id: "save-status", class: "muted"});

  root.append(
    el("div", {class: "pg-grid"},
      el("div", {class: "pg-col"},
        el("div", {class: "panel"},
          el("h2", {}, "Prompt"),
          el("div", {class: "pg-row"}, el("label", {}, "Policy ", policySelect),
            el("span", {class: "pg-modes"}, modePrompt, modeChat), chatApi),
          prompt,
          el("div", {class: "pg-row"}, analyzeButton,
            el("label", {class: "muted"}, auto, " analyze as I type"), analyzeStatus),
          analyzeError),
        el("div", {class: "panel"},
          el("h2", {}, "Findings"),
          highlighted,
          el("table", {class: "pg-findings"},
            el("thead", {}, el("tr", {}, ["Entity", "Found", "Detector", "Score", "Action"]
              .map((h) => el("th", {}, h)))),
            findings))),
      el("div", {class: "pg-col"},
        el("div", {class: "panel"}, el("h2", {}, "Decision"), decision),
        el("div", {class: "panel"}, el("h2", {}, "Sent to the model"), masked),
        el("div", {class: "panel"}, el("h2", {}, "Sample reply, restored"),
          el("div", {class: "pg-label muted"}, "the model writes"), replyModel,
          el("div", {class: "pg-label muted"}, "the client receives"), replyRestored))),
    el("div", {class: "panel"},
      el("h2", {}, "Policy"),
      el("div", {class: "pg-row"}, el("label", {}, "File ", fileSelect), editorStatus),
      el("div", {class: "pg-editor"}, gutter, editor),
      errors,
      el("div", {class: "pg-row"}, signingKey, saveButton, saveStatus)));

  // --- helpers ----------------------------------------------------------------------------
  // One hue per entity type in the order they first appear: up to eight types in one
  // analysis never share a colour, and the findings table is the legend.
  let hues = new Map();
  function hue(entity) {
    if (!hues.has(entity)) hues.set(entity, `hue-${hues.size % HUES}`);
    return hues.get(entity);
  }

  function share() {
    veil.shared.playground = {policy: state.policy, prompt: state.mode === "prompt" ? prompt.value : null,
      chat: state.mode === "chat" ? prompt.value : null};
  }

  function dirty() { return state.file !== null && editor.value !== state.saved[state.file]; }

  function debounce(timer, fn, ms) {
    clearTimeout(state[timer]);
    state[timer] = setTimeout(fn, ms);
  }

  // --- the policy listing -----------------------------------------------------------------
  async function load(keepPolicy) {
    const listing = await api("/api/playground/policies");
    state.listing = listing;
    for (const file of listing.files) state.saved[file.path] = file.text === null ? "" : file.text;
    policySelect.replaceChildren(...listing.policies.map((p) =>
      el("option", {value: p.path}, p.name ? `${p.name} (${p.path})` : `${p.path} (invalid)`)));
    const wanted = keepPolicy && listing.policies.some((p) => p.path === keepPolicy)
      ? keepPolicy : (listing.policies[0] || {}).path;
    policySelect.value = wanted;
    signingKey.hidden = !listing.signing_required;
    choosePolicy(wanted, keepPolicy ? state.file : null);
  }

  function current() {
    return state.listing.policies.find((p) => p.path === state.policy);
  }

  function choosePolicy(path, file) {
    state.policy = path;
    const policy = current();
    const files = policy ? policy.files : [];
    fileSelect.replaceChildren(...files.map((f) => el("option", {value: f}, f)));
    chooseFile(file && files.includes(file) ? file : files[0] || null);
    if (policy && policy.issues.length) showIssues(policy.issues);
    share();
  }

  function chooseFile(file) {
    state.file = file;
    fileSelect.value = file;
    editor.value = file === null ? "" : state.saved[file];
    showIssues([]);
    editorState();
  }

  // --- the editor -------------------------------------------------------------------------
  function renderGutter(errorLines) {
    const count = editor.value.split("\n").length;
    const lines = [];
    for (let n = 1; n <= count; n++) {
      lines.push(el("div", {class: errorLines.has(n) ? "line error" : "line",
        dataset: {line: String(n)}}, String(n)));
    }
    gutter.replaceChildren(...lines);
    gutter.scrollTop = editor.scrollTop;
  }

  function showIssues(issues) {
    const here = issues.filter((i) => i.file === state.file && i.line);
    renderGutter(new Set(here.map((i) => i.line)));
    errors.replaceChildren(...issues.map((issue) => {
      const where = issue.line ? `${issue.file}:${issue.line}:${issue.column}` : issue.file;
      const item = el("li", {class: "error", dataset: {line: String(issue.line || ""), file: issue.file}},
        el("span", {class: "pg-where"}, where), " ", issue.key ? `${issue.key}: ` : "", issue.message);
      if (issue.file === state.file && issue.line) {
        item.addEventListener("click", () => goToLine(issue.line));
      }
      return item;
    }));
  }

  function goToLine(line) {
    const lines = editor.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + lines[line - 1].length);
  }

  function editorState(validity) {
    const edited = dirty();
    saveButton.disabled = !edited || validity === false;
    editorStatus.textContent = !edited ? "saved" :
      validity === false ? "edited: has problems, cannot be saved" :
      validity === true ? "edited, valid: not saved" : "edited: checking…";
    editorStatus.className = validity === false ? "bad" : edited ? "warn" : "muted";
  }

  async function validate() {
    const seq = ++state.validateSeq;
    const file = state.file;
    if (file === null) return;
    try {
      const result = await api("/api/playground/validate", {policy: file, text: editor.value});
      if (seq !== state.validateSeq) return;
      showIssues(result.issues);
      editorState(result.ok);
    } catch (error) {
      if (seq !== state.validateSeq) return;
      showIssues([{file, line: null, column: null, key: "", message: error.message}]);
      editorState(false);
    }
  }

  async function save() {
    saveButton.disabled = true;
    saveStatus.textContent = "saving…";
    saveStatus.className = "muted";
    const body = {policy: state.file, text: editor.value};
    if (!signingKey.hidden) body.signing_key = signingKey.value;
    try {
      const saved = await api("/api/playground/save", body);
      state.saved[state.file] = body.text;
      const digest = saved.digest ? `: ${saved.digest.slice(0, 23)}…` : "";
      saveStatus.textContent = `saved ${saved.path}${saved.signed ? " (signed)" : ""}${digest}`;
      saveStatus.className = "ok";
      await load(state.policy);
      analyze();
    } catch (error) {
      saveStatus.textContent = `not saved: ${error.message}`;
      saveStatus.className = "bad";
      editorState();
      validate();
    }
  }

  // --- analysis ---------------------------------------------------------------------------
  function request() {
    const body = {policy: state.policy};
    if (state.file === state.policy && dirty()) body.draft = editor.value;
    if (state.mode === "prompt") {
      body.prompt = prompt.value;
    } else {
      try {
        body.chat = JSON.parse(prompt.value);
      } catch (error) {
        throw new Error(`The chat is not valid JSON: ${error.message}`);
      }
      body.api = chatApi.value;
    }
    return body;
  }

  // Each finished analysis counts on the view (data-analyses): tests wait on it, and
  // only the latest request's answer is ever shown.
  function analyzed() { root.dataset.analyses = String(Number(root.dataset.analyses || 0) + 1); }

  async function analyze() {
    clearTimeout(state.analyzeTimer);
    const seq = ++state.analyzeSeq;
    if (!state.policy) return;
    analyzeError.textContent = "";
    analyzeStatus.textContent = "analyzing…";
    try {
      const body = request();
      const result = await api("/api/playground/analyze", body);
      if (seq !== state.analyzeSeq) return;
      analyzeStatus.textContent = result.policy.draft ? "against the unsaved draft" : "";
      show(result);
    } catch (error) {
      if (seq !== state.analyzeSeq) return;
      analyzeStatus.textContent = "";
      analyzeError.textContent = error.message;
    }
    analyzed();
  }

  function marked(text, spans) {
    const nodes = [];
    let at = 0;
    for (const f of [...spans].sort((a, b) => a.utf16_start - b.utf16_start)) {
      if (f.utf16_start < at) continue;  // overlapping: listed below, not drawn twice
      if (f.utf16_start > at) nodes.push(text.slice(at, f.utf16_start));
      nodes.push(el("mark", {class: `finding ${hue(f.entity)}`,
        title: `${f.entity} · ${f.detector} · score ${f.score.toFixed(2)} · ${f.action || ""}`,
        dataset: {entity: f.entity, detector: f.detector, score: String(f.score)}},
        text.slice(f.utf16_start, f.utf16_end)));
      at = f.utf16_end;
    }
    nodes.push(text.slice(at));
    return nodes;
  }

  function show(result) {
    hues = new Map();
    const many = result.texts.length > 1;
    highlighted.replaceChildren(...(result.texts.length ? result.texts.map((t, i) =>
      el("div", {class: "pg-text", dataset: {index: String(i)}},
        many ? el("span", {class: "pg-label muted"}, `text ${i + 1}`) : null,
        el("div", {class: "pg-body"}, marked(t.text, t.findings))))
      : [el("span", {class: "muted"}, "No text to scan.")]));
    const rows = result.texts.flatMap((t) => t.findings.map((f) => {
      const found = t.text.slice(f.utf16_start, f.utf16_end);
      return el("tr", {dataset: {entity: f.entity}},
        el("td", {}, el("span", {class: `pg-chip ${hue(f.entity)}`}, f.entity)),
        el("td", {class: "mono"}, found), el("td", {}, f.detector),
        el("td", {}, f.score.toFixed(2)), el("td", {}, f.action || ""));
    }));
    findings.replaceChildren(...(rows.length ? rows :
      [el("tr", {}, el("td", {colspan: "5", class: "muted"}, "Nothing found."))]));
    showDecision(result);
    masked.textContent = result.sent === null ? "nothing: the request is blocked" :
      typeof result.sent === "string" ? result.sent : JSON.stringify(result.sent, null, 2);
    masked.classList.toggle("muted", result.sent === null);
    replyModel.textContent = result.reply ? result.reply.model : "—";
    replyRestored.textContent = result.reply ? result.reply.restored : "—";
  }

  function showDecision(result) {
    const d = result.decision;
    const rows = [
      ["Outcome", el("span", {id: "outcome", class: `pg-outcome ${d.outcome === "block" ? "bad" : "ok"}`}, d.outcome)],
      ["Rule", el("code", {id: "rule"}, d.rule)],
      ["Data classes", d.data_classes.join(", ") || "none"],
      ["Requires", d.requires.join(", ") || "no trust level"],
      ["Policy", `${result.policy.name} ${result.policy.draft ? "(unsaved draft)" : ""}`],
      ["Digest", el("code", {class: "pg-digest", title: result.policy.digest},
        `${result.policy.digest.slice(0, 23)}…`)],
    ];
    if (d.refusal) rows.push(["Client gets", el("span", {class: "bad"}, d.refusal)]);
    if (d.failed_open.length) rows.push(["Failed open", d.failed_open.join(", ")]);
    decision.replaceChildren(el("table", {class: "pg-decision"},
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))));
  }

  function setMode(mode) {
    if (mode === state.mode) return;
    state.mode = mode;
    modePrompt.classList.toggle("active", mode === "prompt");
    modeChat.classList.toggle("active", mode === "chat");
    chatApi.hidden = mode !== "chat";
    if (mode === "chat" && !prompt.value.trim().startsWith("{")) prompt.value = EXAMPLE_CHAT;
    prompt.rows = mode === "chat" ? 12 : 7;
    share();
    analyze();
  }

  // --- wiring -----------------------------------------------------------------------------
  policySelect.addEventListener("change", () => { choosePolicy(policySelect.value, null); analyze(); });
  fileSelect.addEventListener("change", () => {
    if (dirty() && !window.confirm("Discard the unsaved edits to this file?")) {
      fileSelect.value = state.file;
      return;
    }
    chooseFile(fileSelect.value);
  });
  modePrompt.addEventListener("click", () => setMode("prompt"));
  modeChat.addEventListener("click", () => setMode("chat"));
  chatApi.addEventListener("change", analyze);
  analyzeButton.addEventListener("click", analyze);
  prompt.addEventListener("input", () => {
    share();
    if (auto.checked) debounce("analyzeTimer", analyze, 400);
  });
  editor.addEventListener("input", () => {
    renderGutter(new Set());
    editorState();
    debounce("validateTimer", () => { validate(); if (auto.checked) analyze(); }, 300);
  });
  editor.addEventListener("scroll", () => { gutter.scrollTop = editor.scrollTop; });
  editor.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;  // two spaces: YAML refuses tabs
    event.preventDefault();
    editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
    editor.dispatchEvent(new Event("input"));
  });
  saveButton.addEventListener("click", save);

  load(null).catch((error) => { analyzeError.textContent = `The policies cannot be listed: ${error.message}`; });
});
