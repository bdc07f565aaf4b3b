// The Backends view: each backend of the config, and for the attested ones the verdict of the
// gateway's own verifier (GET /api/backends): each trust level of each policy, met or not and
// until when, why not, what was measured, when it was and will be checked. "Re-attest now"
// (POST /api/backends/attest) runs a fresh attestation and shows what it ended with.
// Everything the server sends is text: it is only ever set with textContent (veil.el).
"use strict";
veil.view("backends", (root) => {
  const {api, el} = veil;
  const POLL_MS = 10000;
  const PENDING_POLL_MS = 1000;  // while a backend's first attestation has not ended
  // status -> [badge class, badge text]
  const BADGES = {
    "attested": ["ok", "attested"],
    "verified": ["ok", "evidence verified: no trust level in force to meet"],
    "unmet": ["bad", "refused: no trust level met"],
    "refused": ["bad", "refused"],
    "pending": ["warn", "not attested yet"],
    "not-attested": ["muted", "no attestation configured"],
  };
  let skew = 0;  // the server's clock minus this browser's, in seconds
  const shown = new Map();  // backend name -> the JSON its card was drawn from

  const list = el("div", {id: "backend-list"});
  const problem = el("p", {id: "backends-error", class: "error", hidden: true});
  const policyError = el("p", {id: "backends-policy-error", class: "error", hidden: true});
  const policies = el("p", {id: "backends-policies", class: "muted"});
  root.append(el("div", {class: "panel"},
    el("h2", {}, "Backends"),
    el("p", {class: "muted"}, "Attested by this studio with the gateway's own verifier and " +
       "the trust levels of the policies in force: what a gateway started now would route by."),
    policies, policyError, problem), list);

  function serverNow() { return Date.now() / 1000 + skew; }

  function absolute(at) {
    return at === null || at === undefined ? "never" :
      new Date(at * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  }

  function span(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"],
                   [Math.floor(s / 60) % 60, "m"], [s % 60, "s"]];
    const first = parts.findIndex(([n]) => n > 0);
    return first < 0 ? "0s" : parts.slice(first, first + 2).map(([n, u]) => `${n}${u}`).join(" ");
  }

  function countdownText(at) {
    const left = Math.round(at - serverNow());  // to the second: the skew is a guess
    return left > 0 ? `in ${span(left)}` : `${span(-left)} ago`;
  }

  // A time as an absolute UTC time and a countdown kept current by tick()
  function time(at, cls) {
    if (at === null || at === undefined) return el("span", {class: cls}, "never");
    return el("span", {class: cls, dataset: {at: String(at)}}, absolute(at), " (",
              el("span", {class: "countdown", dataset: {until: String(at)}}, countdownText(at)),
              ")");
  }

  function tick() {
    for (const node of root.querySelectorAll(".countdown[data-until]")) {
      node.textContent = countdownText(Number(node.dataset.until));
    }
  }

  function pairs(cls, values) {
    const list = el("dl", {class: cls});
    for (const [key, value] of Object.entries(values || {})) {
      if (value === null || value === undefined || typeof value === "object") continue;
      list.append(el("dt", {}, key), el("dd", {class: "mono", dataset: {key}}, String(value)));
    }
    return list;
  }

  function levelRow(level) {
    const reasons = level.problems.length ? el("ul", {class: "problems"},
      level.problems.map((p) => el("li", {}, p))) : null;
    return el("tr", {class: `level ${level.met ? "met" : "not-met"}`,
                     dataset: {level: level.level, policy: level.policy}},
      el("td", {title: `${level.policy_file || ""} ${level.digest}`}, level.policy),
      el("td", {class: "mono"}, level.level),
      el("td", {class: `state ${level.met ? "ok" : "bad"}`}, level.met ? "met" : "not met"),
      el("td", {}, level.met ? time(level.until, "expires") :
         level.until ? el("span", {class: "lapsed"}, "lapsed at ", absolute(level.until)) : "—",
         reasons));
  }

  function levelsTable(verdict) {
    if (!verdict.levels.length) {
      return el("p", {class: "muted levels-none"}, "No policy in force defines a trust level.");
    }
    return el("table", {class: "levels"},
      el("thead", {}, el("tr", {}, ["Policy", "Trust level", "Verdict", "Until / why not"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, verdict.levels.map(levelRow)));
  }

  function measuredPanel(measured, releases) {
    const gpus = measured.gpus.map((gpu) => el("details", {class: "gpu", dataset: {index: String(gpu.index)}},
      el("summary", {}, `GPU ${gpu.index} (certificate serial ${gpu.certificate_serial})`),
      pairs("values", gpu), pairs("values measurements", gpu.measurements)));
    return el("div", {class: "measured"},
      el("h4", {}, "Measured: ", el("span", {class: "kinds"}, measured.kinds.join(" + "))),
      releases.length ? el("p", {class: "releases"}, "Measurement from signed release: ",
                           releases.join("; ")) : null,
      measured.sev_snp ? el("div", {class: "part sev-snp"}, el("h5", {}, "SEV-SNP report"),
                            pairs("values", measured.sev_snp)) : null,
      measured.tdx ? el("div", {class: "part tdx"}, el("h5", {}, "TDX quote"),
                        pairs("values", measured.tdx)) : null,
      gpus.length ? el("div", {class: "part gpus"},
                       el("h5", {}, `NVIDIA GPUs: ${measured.gpu_count}`), gpus) : null,
      pairs("values binding", {
        "report_data (binds nonce and TLS key)": measured.report_data,
        "TLS certificate sha256": measured.tls_certificate_sha256,
        "tokens": measured.tokens, "evidence digest": measured.digest}));
  }

  function card(backend) {
    const [badgeClass, badgeText] = BADGES[backend.status] || ["bad", backend.status];
    const node = el("div", {id: `backend-${backend.name}`, class: `panel backend ${backend.status}`,
                            dataset: {backend: backend.name, status: backend.status}},
      el("div", {class: "backend-head"},
        el("h3", {}, backend.name),
        el("span", {class: `badge verdict ${badgeClass}`}, badgeText)),
      pairs("about", {url: backend.url, format: backend.format}));
    const verdict = backend.verdict;
    if (!verdict) {
      node.append(el("p", {class: "muted unattested"},
        "Not attested: this backend's config has no attestation, so it never receives data " +
        "a policy routes only to a trust level."));
      return node;
    }
    const button = el("button", {class: "reattest", type: "button"}, "Re-attest now");
    const failure = el("p", {class: "error reattest-error", hidden: true});
    button.addEventListener("click", async () => {
      button.disabled = true;
      failure.hidden = true;
      try {
        draw(await api("/api/backends/attest", {backend: backend.name}));
      } catch (error) {
        failure.textContent = error.message;
        failure.hidden = false;
        button.disabled = false;
      }
    });
    node.append(...[  // the parts this backend has (append would show null as text)
      el("div", {class: "checks"},
        el("span", {}, "Last attested: ", time(verdict.checked_at, "checked-at")),
        el("span", {}, "Next check: ", time(verdict.next_check_at, "next-check")),
        button),
      failure,
      verdict.error ? el("p", {class: "error reason"}, verdict.error) : null,
      levelsTable(verdict),
      verdict.measured ? measuredPanel(verdict.measured, verdict.releases) : null,
    ].filter(Boolean));
    return node;
  }

  // Redraw a card only when what it shows changed (the countdowns tick on their own)
  function draw(backend) {
    const json = JSON.stringify(backend);
    if (shown.get(backend.name) === json) return;
    shown.set(backend.name, json);
    const fresh = card(backend);
    const old = document.getElementById(`backend-${backend.name}`);
    if (old) old.replaceWith(fresh); else list.append(fresh);
  }

  async function load() {
    try {
      const data = await api("/api/backends");
      skew = data.now - Date.now() / 1000;
      policies.textContent = data.policies.length ? "Policies in force: " +
        data.policies.map((p) => `${p.name} (${p.file})`).join(", ") : "No policy loaded.";
      policyError.hidden = !data.policy_error;
      policyError.textContent = data.policy_error ?
        `The policies do not load (the last set that did stays in force): ${data.policy_error}` : "";
      data.backends.forEach(draw);
      problem.hidden = true;
      return data.backends.some((b) => b.status === "pending");
    } catch (error) {
      problem.textContent = `Could not read the backends: ${error.message}`;
      problem.hidden = false;
      return false;
    }
  }

  async function poll() {
    const pending = await load();
    setTimeout(poll, pending ? PENDING_POLL_MS : POLL_MS);
  }

  poll();
  setInterval(tick, 1000);
});
