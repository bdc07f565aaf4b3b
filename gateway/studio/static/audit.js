// The audit view: the chain's verdict, filters, three charts and the records table. Every
// name shown (tenant, rule, backend, entity type) comes from the audit file, which a request
// or a config can shape: all of it is set as text (veil.el, textContent), never as markup.
// Charts are plain SVG built node by node; times are UTC, as the audit records them.
"use strict";
veil.view("audit", (root) => {
  const {el, api} = veil;
  const SVG = "http://www.w3.org/2000/svg";
  const OUTCOMES = ["forwarded", "blocked", "refused", "failed"];
  const OUTCOME_COLOURS = {forwarded: "#2f5bd3", blocked: "#c0262d", refused: "#d08a1b",
                           failed: "#6b7280"};
  const PALETTE = ["#2f5bd3", "#c0262d", "#18794e", "#d08a1b", "#7c3aed", "#0e7490",
                   "#be185d", "#4d7c0f", "#6b7280"];
  const FILTERS = [
    ["tenant", "tenants", "Tenant", "All tenants"],
    ["rule", "rules", "Rule", "All rules"],
    ["data_class", "data_classes", "Data class", "All data classes"],
    ["backend", "backends", "Backend", "All backends"],
    ["outcome", "outcomes", "Outcome", "All outcomes"],
  ];
  let cursor = null;
  let generation = 0;  // each refresh's number: an answer to an older one is dropped
  let breaks = new Map();  // chain -> the seq where it stops verifying, to mark that row

  const chain = el("div", {id: "audit-chain", class: "audit-chain muted"}, "Verifying the chain…");
  const chainDetails = el("ul", {id: "audit-chains", class: "audit-chains"});
  const reverify = el("button", {id: "audit-verify", class: "secondary", type: "button",
                                 onclick: () => verifyChain()}, "Verify again");
  const selects = Object.fromEntries(FILTERS.map(([name, , , all]) => [name, el("select",
    {id: `audit-${name.replace("_", "-")}`, name, onchange: () => refresh()},
    el("option", {value: ""}, all))]));
  const since = el("input", {id: "audit-since", type: "datetime-local", step: "1",
                             onchange: () => refresh()});
  const until = el("input", {id: "audit-until", type: "datetime-local", step: "1",
                             onchange: () => refresh()});
  const bucket = el("select", {id: "audit-bucket", onchange: () => refresh()},
    ["auto", "minute", "hour", "day", "week"].map((b) => el("option", {value: b}, b)));
  const reset = el("button", {id: "audit-reset", class: "secondary", type: "button",
                              onclick: () => resetFilters()}, "Clear filters");
  const problem = el("p", {id: "audit-error", class: "error", hidden: true});
  const matched = el("p", {id: "audit-matched", class: "muted audit-matched"});
  const requestsChart = el("div", {id: "audit-chart-requests", class: "audit-chart"});
  const blocksChart = el("div", {id: "audit-chart-blocks", class: "audit-chart"});
  const entitiesChart = el("div", {id: "audit-chart-entities", class: "audit-chart"});
  const rows = el("tbody", {id: "audit-rows"});
  const more = el("button", {id: "audit-more", class: "secondary", type: "button", hidden: true,
                             onclick: () => loadRecords(true).catch(showProblem)},
                 "Older records");
  const unreadable = el("p", {id: "audit-unreadable", class: "warn", hidden: true});
  const columns = ["Time (UTC)", "Seq", "Tenant", "Key", "Route", "Model", "Outcome", "Rule",
                   "Data classes", "Entities", "Backend", "Status", "ms"];

  root.append(
    el("div", {class: "panel audit-status"}, chain, reverify, chainDetails),
    el("div", {class: "panel audit-filters", id: "audit-filters"},
      FILTERS.map(([name, , label]) => el("label", {}, label, selects[name])),
      el("label", {}, "From (UTC)", since), el("label", {}, "To (UTC)", until),
      el("label", {}, "Bucket", bucket), reset),
    problem,
    el("div", {class: "audit-charts"},
      el("div", {class: "panel audit-wide"}, el("h2", {}, "Requests over time"), requestsChart),
      el("div", {class: "panel"}, el("h2", {}, "Blocks by rule"), blocksChart),
      el("div", {class: "panel"}, el("h2", {}, "Entities found over time"), entitiesChart)),
    el("div", {class: "panel"},
      el("h2", {}, "Records"), matched,
      el("div", {class: "audit-table"}, el("table", {id: "audit-records"},
        el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))), rows)),
      unreadable, more));

  function query(extra) {
    const params = new URLSearchParams();
    for (const [name] of FILTERS) if (selects[name].value) params.set(name, selects[name].value);
    if (since.value) params.set("since", since.value);
    if (until.value) params.set("until", until.value);
    for (const [k, v] of Object.entries(extra || {})) if (v) params.set(k, v);
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  async function verifyChain() {
    chain.className = "audit-chain muted";
    chain.textContent = "Verifying the chain…";
    chainDetails.replaceChildren();
    breaks = new Map();
    try {
      const verdict = await api("/api/audit/verify");
      for (const c of verdict.chains) if (c.broken) breaks.set(c.chain, c.broken.seq);
      markBreaks();
      const broken = verdict.chains.find((c) => !c.ok);
      if (verdict.ok) {
        const spread = verdict.chains.length > 1 ? ` in ${verdict.chains.length} chains` : "";
        chain.className = "audit-chain ok";
        chain.textContent = `Chain verified: ${verdict.records} records${spread}`;
      } else if (broken && broken.broken) {
        const b = broken.broken;
        const at = b.seq === null ? "its first record" : `seq ${b.seq}`;
        chain.className = "audit-chain bad";
        chain.textContent = `Chain broken at ${at} (${b.file} line ${b.line}): ${b.reason}`;
      } else {
        chain.className = "audit-chain bad";
        chain.textContent = `Chain not verified: ${verdict.message || (broken && broken.message)}`;
      }
      if (!verdict.enabled) {
        chainDetails.append(el("li", {class: "warn"}, "audit is off in this config " +
          "(audit.enabled: false): the gateway is not adding records"));
      }
      for (const c of verdict.chains) {
        const utc = (t) => t.replace("+00:00", "Z");
        const span = c.first_time ? ` · ${utc(c.first_time)} – ${utc(c.last_time)}` : "";
        chainDetails.append(el("li", {class: c.ok ? "ok" : "bad"},
          `${c.chain}: ${c.message}${span}`));
      }
    } catch (error) {
      chain.className = "audit-chain bad";
      chain.textContent = `Chain cannot be verified: ${error.message}`;
    }
  }

  async function refresh() {
    const mine = ++generation;
    problem.hidden = true;
    try {
      const summary = await api(`/api/audit/summary${query({bucket: bucket.value})}`);
      if (mine !== generation) return;
      offer(summary.options);
      const span = summary.first_time ? `, ${summary.first_time} – ${summary.last_time}` : "";
      matched.textContent = `${summary.matched} matching record${
        summary.matched === 1 ? "" : "s"}${span} · bucket: ${summary.bucket}`;
      drawRequests(summary);
      drawBlocks(summary.blocks_by_rule);
      drawEntities(summary);
      await loadRecords(false, mine);
    } catch (error) {
      if (mine === generation) showProblem(error);
    }
  }

  function showProblem(error) {
    problem.textContent = error.message;
    problem.hidden = false;
  }

  function offer(options) {
    for (const [name, key] of FILTERS) {
      const select = selects[name];
      const chosen = select.value;
      const values = new Set(options[key] || []);
      if (chosen) values.add(chosen);
      select.replaceChildren(select.options[0],
        ...[...values].sort().map((v) => el("option", {value: v}, v)));
      select.value = chosen;
    }
  }

  function resetFilters() {
    for (const select of Object.values(selects)) select.value = "";
    since.value = "";
    until.value = "";
    bucket.value = "auto";
    refresh();
  }

  async function loadRecords(older, mine = generation) {
    const page = await api(`/api/audit/records${query({cursor: older ? cursor : null})}`);
    if (mine !== generation) return;
    if (!older) rows.replaceChildren();
    for (const r of page.records) rows.append(recordRow(r));
    markBreaks();
    if (!older && page.records.length === 0) {
      rows.append(el("tr", {}, el("td", {colspan: columns.length, class: "muted"},
        "No records match these filters.")));
    }
    cursor = page.next_cursor;
    more.hidden = !cursor;
    unreadable.hidden = !page.unreadable;
    unreadable.textContent = `${page.unreadable} line(s) in the audit files are not records ` +
      "and are not shown (see the chain status above).";
  }

  function markBreaks() {
    for (const tr of rows.querySelectorAll("tr[data-seq]")) {
      const at = breaks.get(tr.dataset.chain) === Number(tr.dataset.seq);
      tr.classList.toggle("audit-broken", at);
      if (at) tr.title = "The chain stops verifying at this record";
      else tr.removeAttribute("title");
    }
  }

  function recordRow(r) {
    const entities = Object.entries(r.entities).map(([k, n]) => `${k} ×${n}`).join(", ");
    return el("tr", {dataset: {seq: String(r.seq), chain: r.chain}},
      el("td", {class: "mono"}, r.time.replace("T", " ").replace("Z", "")),
      el("td", {class: "mono", title: r.chain}, r.seq),
      el("td", {}, r.tenant ?? "—"), el("td", {}, r.key ?? "—"),
      el("td", {}, r.route ?? "—"), el("td", {}, r.model ?? "—"),
      el("td", {class: `outcome outcome-${OUTCOMES.includes(r.outcome) ? r.outcome : "other"}`},
        r.outcome ?? "—"),
      el("td", {}, r.rule ?? "—"), el("td", {}, r.data_classes.join(", ") || "—"),
      el("td", {}, entities || "—"), el("td", {}, r.backend ?? "—"),
      el("td", {class: "mono"}, r.status ?? "—"),
      el("td", {class: "mono"}, r.latency_ms === null ? "—" : r.latency_ms.toFixed(1)));
  }

  // --- charts: plain SVG, drawn into a fixed viewBox that scales with the panel ---

  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  // The top of a y axis: a round number at or above `value`, even so its half is whole.
  function niceMax(value) {
    if (value <= 1) return 1;
    const step = value <= 10 ? 2 : 10 ** Math.floor(Math.log10(value)) / 2;
    return Math.ceil(value / step) * step;
  }

  function label(start, width) {
    const text = start.replace("T", " ").replace(".000Z", "");
    if (width === "minute") return text.slice(5, 16);
    if (width === "hour") return `${text.slice(5, 13)}:00`;
    return text.slice(0, 10);
  }

  function legend(entries) {
    return el("div", {class: "audit-legend"}, entries.map(([name, colour]) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = colour;
      return el("span", {class: "item"}, swatch, name);
    }));
  }

  // A frame W x H with a y axis from 0 to `top`, and x labels for the first, middle and last
  // bucket (the first and last aligned inwards, so they stay inside the frame).
  function frame(series, width, top, W, H) {
    const left = 44, right = 12, upper = 10, lower = 26;
    const plot = {x: left, y: upper, w: W - left - right, h: H - upper - lower};
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "audit-svg", role: "img"});
    for (const fraction of top % 2 === 0 ? [0, 0.5, 1] : [0, 1]) {
      const y = plot.y + plot.h * (1 - fraction);
      chart.append(svg("line", {x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y,
                                class: fraction ? "grid" : "axis"}),
                   svg("text", {x: plot.x - 6, y: y + 4, "text-anchor": "end", class: "tick"},
                       Math.round(top * fraction)));
    }
    const slot = plot.w / Math.max(series.length, 1);
    const marks = series.length > 2 ? [0, Math.floor((series.length - 1) / 2),
                                       series.length - 1] : series.map((_, i) => i);
    for (const i of new Set(marks)) {
      const anchor = series.length === 1 ? "middle" : i === 0 ? "start" :
        i === series.length - 1 ? "end" : "middle";
      const x = anchor === "start" ? plot.x : anchor === "end" ? plot.x + plot.w :
        plot.x + slot * (i + 0.5);
      chart.append(svg("text", {x, y: H - 8, "text-anchor": anchor, class: "tick"},
                       label(series[i].start, width)));
    }
    return {chart, plot, slot};
  }

  function empty(container, text) {
    container.replaceChildren(el("p", {class: "muted audit-empty"}, text));
  }

  function drawRequests(summary) {
    const series = summary.series;
    if (!series.length) return empty(requestsChart, "No requests in this selection.");
    const top = niceMax(Math.max(...series.map((b) => b.requests)));
    const {chart, plot, slot} = frame(series, summary.bucket, top, 1300, 240);
    const barWidth = Math.max(1, Math.min(slot * 0.7, 48));
    series.forEach((b, i) => {
      let y = plot.y + plot.h;
      for (const outcome of OUTCOMES) {
        const n = b.outcomes[outcome];
        if (!n) continue;
        const h = plot.h * n / top;
        y -= h;
        chart.append(svg("rect", {x: plot.x + slot * (i + 0.5) - barWidth / 2, y, width: barWidth,
                                  height: h, fill: OUTCOME_COLOURS[outcome],
                                  class: `bar bar-${outcome}`},
          svg("title", {}, `${label(b.start, summary.bucket)} · ${outcome}: ${n}`)));
      }
    });
    requestsChart.replaceChildren(chart, legend(OUTCOMES.map((o) => [o, OUTCOME_COLOURS[o]])));
  }

  function drawBlocks(blocks) {
    if (!blocks.length) return empty(blocksChart, "No blocked requests in this selection.");
    const W = 640, rowHeight = 26, left = 220, right = 50;
    const H = blocks.length * rowHeight + 10;
    const top = Math.max(...blocks.map((b) => b.count));
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "audit-svg", role: "img"});
    blocks.forEach((b, i) => {
      const y = 5 + i * rowHeight;
      const w = (W - left - right) * b.count / top;
      const name = b.rule.length > 32 ? `${b.rule.slice(0, 31)}…` : b.rule;
      chart.append(
        svg("text", {x: left - 8, y: y + 17, "text-anchor": "end", class: "rule-name"}, name,
            svg("title", {}, b.rule)),
        svg("rect", {x: left, y: y + 3, width: Math.max(w, 2), height: rowHeight - 8,
                     fill: OUTCOME_COLOURS.blocked, class: "bar"},
            svg("title", {}, `${b.rule}: ${b.count}`)),
        svg("text", {x: left + w + 6, y: y + 17, class: "count"}, b.count));
    });
    blocksChart.replaceChildren(chart);
  }

  function drawEntities(summary) {
    const types = summary.entity_types;
    const series = summary.series;
    if (!types.length || !series.length) {
      return empty(entitiesChart, "No entities found in this selection.");
    }
    const top = niceMax(Math.max(...series.flatMap((b) => types.map((t) => b.entities[t]))));
    const {chart, plot, slot} = frame(series, summary.bucket, top, 640, 260);
    types.forEach((type, k) => {
      const colour = PALETTE[k % PALETTE.length];
      const points = series.map((b, i) => [plot.x + slot * (i + 0.5),
                                           plot.y + plot.h * (1 - b.entities[type] / top)]);
      chart.append(svg("polyline", {points: points.map((p) => p.join(",")).join(" "),
                                    fill: "none", stroke: colour, "stroke-width": 2,
                                    class: "line"}));
      if (series.length > 60) return;  // too dense for a dot per bucket
      points.forEach(([x, y], i) => chart.append(svg("circle", {cx: x, cy: y, r: 3, fill: colour},
        svg("title", {}, `${label(series[i].start, summary.bucket)} · ${type}: ` +
                         `${series[i].entities[type]}`))));
    });
    entitiesChart.replaceChildren(chart,
      legend(types.map((t, k) => [t, PALETTE[k % PALETTE.length]])));
  }

  verifyChain();
  refresh();
});
