// asyncsynth view: one page, no dependencies. Every value from a run is put into the page
// as text (textContent, createTextNode), never as markup.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;
const PAGE = 50;

// -- small helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function add(node, ...children) {
  append(node, children);
  return node;
}

function put(node, ...children) {
  return add(clear(node), ...children);
}

function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toFixed(digits);
  }
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.map((v) => fmt(v, digits)).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function pct(value) {
  return typeof value === "number" ? (100 * value).toFixed(1) + "%" : "-";
}

function clip(text, n = 160) {
  const s = text === null || text === undefined ? "" : String(text);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

async function api(route, params = {}) {
  const url = new URL("/api/" + route, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  const response = await fetch(url);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function errorBox(error) {
  return el("p", { class: "error" }, String(error.message || error));
}

function facts(pairs) {
  return el(
    "dl",
    { class: "facts" },
    pairs
      .filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { k } }, v instanceof Node ? v : fmt(v))])
  );
}

function simpleTable(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.title || h)))),
    el("tbody", {}, rows)
  );
}

function select(label, options, attrs = {}) {
  const node = el(
    "select",
    attrs,
    options.map(([value, text]) => el("option", { value }, text))
  );
  return [el("label", {}, label, node), node];
}

function input(label, attrs = {}) {
  const node = el("input", attrs);
  return [el("label", {}, label, node), node];
}

// -- charts (inline SVG) -------------------------------------------------------------------

function barChart({ labels, values, max, width = 360, height = 180, format = fmt, alt = null }) {
  const tilt = labels.length > 6 || labels.some((l) => String(l).length > 7);
  const pad = { l: 38, r: 8, t: 10, b: tilt ? 52 : 24 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const top = max ?? Math.max(1e-9, ...values, ...(alt || []));
  const step = w / Math.max(1, labels.length);
  const bar = Math.max(2, step * 0.7);
  const chart = svg("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.style.maxWidth = `${width}px`;
  add(chart, svg("line", { class: "axis", x1: pad.l, y1: pad.t + h, x2: pad.l + w, y2: pad.t + h }));
  add(chart, svg("text", { x: 2, y: pad.t + 8 }, format(top)));
  labels.forEach((label, i) => {
    const x = pad.l + i * step + (step - bar) / 2;
    if (alt) {
      const ah = (h * (alt[i] || 0)) / top;
      add(chart, svg("rect", { class: "bar alt", x, y: pad.t + h - ah, width: bar, height: ah }));
    }
    const bh = (h * (values[i] || 0)) / top;
    add(chart, 
      svg("rect", { class: "bar", x, y: pad.t + h - bh, width: bar, height: bh },
        svg("title", {}, `${label}: ${format(values[i])}`))
    );
    if (labels.length <= 24 || i % Math.ceil(labels.length / 12) === 0) {
      const lx = x + bar / 2;
      const ly = pad.t + h + 14;
      const attrs = tilt
        ? { x: lx, y: ly, "text-anchor": "end", transform: `rotate(-35 ${lx} ${ly})` }
        : { x: lx, y: ly, "text-anchor": "middle" };
      add(chart, svg("text", attrs, clip(label, 14)));
    }
  });
  return chart;
}

function chartBox(title, chart, note) {
  return el("div", { class: "chart panel" }, el("h3", {}, title), chart, note ? el("p", { class: "muted" }, note) : null);
}

// -- paged rows ----------------------------------------------------------------------------

// A table of rows from one or more JSONL files, paged by the server (byte offsets) and
// filtered there; `filter()` returns the current filter object (or null).
function rowsBrowser({ files, columns, filter = () => null, onOpen = null, limit = PAGE, testid }) {
  const body = el("tbody");
  const status = el("span", { class: "muted", dataset: { testid: `${testid}-status` } });
  const prev = el("button", { type: "button", disabled: true }, "‹ previous");
  const next = el("button", { type: "button", disabled: true }, "next ›");
  const table = el(
    "table",
    { dataset: { testid } },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.title)))),
    body
  );
  const node = el("div", {}, table, el("div", { class: "pager" }, prev, next, status));
  let start = 0;
  let cursors = [null];
  let page = 0;
  let last = null;
  let opened = null;
  let latest = 0;

  async function load() {
    const ticket = ++latest; // an answer to an older request is dropped
    const f = filter();
    const filtered = f && Object.keys(f).length > 0;
    const params = { file: files(), limit };
    if (filtered) {
      params.filter = JSON.stringify(f);
      params.cursor = cursors[page];
    } else {
      params.start = start;
    }
    let data;
    try {
      data = await api("rows", params);
    } catch (error) {
      if (ticket === latest) put(body, el("tr", {}, el("td", { colspan: columns.length }, errorBox(error))));
      return;
    }
    if (ticket !== latest) return;
    last = data;
    clear(body);
    for (const item of data.rows) {
      const key = `${item.file}:${item.offset}`;
      const tr = el(
        "tr",
        { class: onOpen ? "pick" : null, dataset: { file: item.file, offset: item.offset } },
        columns.map((c) => {
          const value = c.get(item.row, item);
          return el("td", { class: [c.num ? "num" : "", c.clip ? "clip" : ""].join(" ").trim() || null }, value instanceof Node ? value : fmt(value));
        })
      );
      if (key === opened) tr.classList.add("open");
      if (onOpen) {
        tr.addEventListener("click", () => {
          for (const other of body.querySelectorAll("tr.open")) other.classList.remove("open");
          tr.classList.add("open");
          opened = key;
          onOpen(item);
        });
      }
      add(body, tr);
    }
    if (!data.rows.length) {
      add(body, el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, "no rows")));
    }
    if (data.filtered) {
      const scanned = data.size ? Math.round((100 * data.scanned) / data.size) : 100;
      status.textContent = `${data.rows.length} matching rows on this page · scanned ${scanned}% of ${fmt(data.total)} rows`;
      prev.disabled = page === 0;
      next.disabled = data.next === null;
      cursors[page + 1] = data.next;
    } else {
      const shown = data.rows.length;
      status.textContent = shown
        ? `rows ${fmt(data.start + 1)}–${fmt(data.start + shown)} of ${fmt(data.total)}`
        : `${fmt(data.total)} rows`;
      prev.disabled = start === 0;
      next.disabled = data.next === null;
    }
  }

  prev.addEventListener("click", () => {
    if (last && last.filtered) page = Math.max(0, page - 1);
    else start = Math.max(0, start - limit);
    load();
  });
  next.addEventListener("click", () => {
    if (last && last.filtered) page += 1;
    else if (last && last.next !== null) start = last.next;
    load();
  });

  return {
    node,
    reload() {
      start = 0;
      cursors = [null];
      page = 0;
      return load();
    },
    refresh: load,
  };
}

// -- GRA -----------------------------------------------------------------------------------

function scoreCells(scores, criteria) {
  return criteria.map((c) => el("td", { class: "num", dataset: { k: c } }, fmt(scores ? scores[c] : null)));
}

const RESPONSE_CRITERIA = ["correctness", "clarity", "completeness", "relevance", "coherence", "ethicality"];
const INSTRUCTION_CRITERIA = ["rationality", "completeness", "clarity"];

function graDetail(item, panel) {
  const row = item.row;
  const review = row.review || {};
  const accepted = item.file === "accepted.jsonl";
  const status = accepted
    ? el("span", { class: "tag ok" }, "accepted")
    : el("span", { class: "tag bad" }, "rejected: " + (row.reason || "?"));
  const checks = (review.checks || []).map((c) =>
    el(
      "tr",
      { class: "check", dataset: { model: c.model } },
      el("td", { dataset: { k: "model" } }, c.model),
      el("td", { dataset: { k: "passed" } }, c.passed ? "pass" : "fail"),
      INSTRUCTION_CRITERIA.map((k) => el("td", { dataset: { k } }, fmt((c.criteria || {})[k]))),
      el("td", { dataset: { k: "assessment" } }, c.assessment)
    )
  );
  const reviews = (review.reviews || []).map((r) =>
    el(
      "tr",
      { class: "review", dataset: { model: r.model } },
      el("td", { dataset: { k: "model" } }, r.model),
      el("td", { class: "num", dataset: { k: "score" } }, fmt(r.score)),
      scoreCells(r.scores, RESPONSE_CRITERIA),
      el("td", { dataset: { k: "strengths" } }, r.strengths),
      el("td", { dataset: { k: "weaknesses" } }, r.weaknesses)
    )
  );
  const adj = review.adjudication;
  const failures = row.failures || [];
  const generation = row.generation || {};
  const pool = el("div", { dataset: { testid: "pool-examples" } }, el("p", { class: "muted" }, "none"));
  const examples = generation.examples || [];
  if (examples.length) {
    api("pool", { ids: examples.join(",") })
      .then((data) => {
        put(pool, 
          simpleTable(
            ["pool entry", "domain", "keywords", "summary"],
            examples.map((id) => {
              const e = data.entries[id] || {};
              return el("tr", {}, el("td", {}, id), el("td", {}, e.domain), el("td", {}, fmt(e.keywords)), el("td", {}, e.summary));
            })
          )
        );
      })
      .catch((error) => put(pool, errorBox(error)));
  }
  put(panel, 
    el("h2", { dataset: { testid: "sample-id" } }, row.id, " ", status),
    el("h3", {}, "Instruction"),
    el("pre", { class: "text", dataset: { testid: "instruction" } }, row.instruction ?? ""),
    el("h3", {}, "Response"),
    el("pre", { class: "text", dataset: { testid: "response" } }, row.response ?? ""),
    el("h3", {}, "Sample"),
    facts([
      ["domain", row.domain],
      ["keywords", row.keywords],
      ["summary", row.summary],
      ["mode", row.mode],
      ["round", row.round],
      ["generator", row.generator],
      ["reviewers", row.reviewers],
      ["adjudicator", row.adjudicator],
      ["summarized by", row.summarized_by],
      ["μ", row.mu],
      ["σ", row.sigma],
      ["decision", row.decision],
      ["reason", row.reason],
      ["stage", row.stage],
      ["duplicate of", row.duplicate_of],
      ["similarity", row.similarity],
      ["requests", row.requests],
      ["tokens", row.tokens ? `${fmt(row.tokens.in)} in, ${fmt(row.tokens.out)} out` : null],
    ]),
    el("h3", {}, "Instruction checks"),
    checks.length
      ? simpleTable(["model", "verdict", ...INSTRUCTION_CRITERIA, "assessment"], checks, { dataset: { testid: "checks" } })
      : el("p", { class: "muted" }, "none"),
    el("h3", {}, "Reviews"),
    reviews.length
      ? simpleTable(
          ["model", { title: "score", num: true }, ...RESPONSE_CRITERIA.map((c) => ({ title: c, num: true })), "strengths", "weaknesses"],
          reviews,
          { dataset: { testid: "reviews" } }
        )
      : el("p", { class: "muted" }, "none"),
    el("h3", {}, "Adjudication"),
    adj
      ? el(
          "div",
          { dataset: { testid: "adjudication" } },
          facts([
            ["model", adj.model],
            ["score", adj.score],
            ["keep", adj.keep],
            ["assessment", adj.assessment],
          ]),
          simpleTable(RESPONSE_CRITERIA.map((c) => ({ title: c, num: true })), [el("tr", {}, scoreCells(adj.scores, RESPONSE_CRITERIA))])
        )
      : el("p", { class: "muted" }, row.adjudicator ? "the adjudication failed (see failures)" : "not disputed"),
    failures.length ? [el("h3", {}, "Failures"), simpleTable(["stage", "model", "kind", "message", "reply"], failures.map((f) => el("tr", {}, el("td", {}, f.stage), el("td", {}, f.model), el("td", {}, f.kind), el("td", {}, f.message), el("td", { class: "clip" }, clip(f.raw, 300)))))] : null,
    el("h3", {}, "Generator's pool examples"),
    generation.keywords ? el("p", {}, "keywords the generator chose: ", fmt(generation.keywords)) : null,
    pool,
    generation.original_response ? [el("h3", {}, "Original response (refine mode)"), el("pre", { class: "text" }, generation.original_response)] : null,
    el("details", {}, el("summary", {}, "the row as JSON"), el("pre", { class: "text" }, JSON.stringify(row, null, 2)))
  );
}

function graSamples(main, run) {
  const report = run.report || {};
  const reasons = Object.keys(report.rejected || {});
  const domains = Object.keys(report.domains || {});
  const models = (report.committee || {}).pool || Object.keys(report.models || {});
  const rounds = (report.rounds || []).map((r) => r.round);
  const [statusLabel, status] = select("samples", [["all", "all"], ["accepted", "accepted"], ["rejected", "rejected"]], { name: "status" });
  const [reasonLabel, reason] = select("reason", [["", "any"], ...reasons.map((r) => [r, r])], { name: "reason" });
  const [domainLabel, domain] = select("domain", [["", "any"], ...domains.map((d) => [d, d])], { name: "domain" });
  const [modelLabel, model] = select("model", [["", "any"], ...models.map((m) => [m, m])], { name: "model" });
  const [roleLabel, role] = select("as", [["", "any role"], ["generator", "generator"], ["reviewer", "reviewer"], ["adjudicator", "adjudicator"]], { name: "role" });
  const [roundLabel, round] = select("round", [["", "any"], ...rounds.map((r) => [String(r), String(r)])], { name: "round" });
  const [muMinLabel, muMin] = input("μ from", { type: "number", step: "0.1", name: "mu_min" });
  const [muMaxLabel, muMax] = input("μ to", { type: "number", step: "0.1", name: "mu_max" });
  const [searchLabel, search] = input("text", { type: "search", name: "q", placeholder: "search instruction, response…" });
  const apply = el("button", { type: "submit" }, "apply");
  const form = el("form", { class: "bar", dataset: { testid: "filters" } }, statusLabel, reasonLabel, domainLabel, modelLabel, roleLabel, roundLabel, muMinLabel, muMaxLabel, searchLabel, apply);
  const detail = el("div", { class: "panel", dataset: { testid: "detail" } }, el("p", { class: "muted" }, "Choose a sample to see its reviews."));

  const files = () => {
    if (reason.value) return ["rejected.jsonl"];
    if (status.value === "accepted") return ["accepted.jsonl"];
    if (status.value === "rejected") return ["rejected.jsonl"];
    return ["accepted.jsonl", "rejected.jsonl"];
  };
  const filter = () => {
    const f = {};
    const eq = {};
    if (reason.value) eq.reason = reason.value;
    if (domain.value) eq.domain = domain.value;
    if (round.value) eq.round = round.value;
    if (Object.keys(eq).length) f.eq = eq;
    if (model.value) {
      f.model = model.value;
      if (role.value) f.role = role.value;
    }
    if (muMin.value !== "") f.min = { mu: muMin.value };
    if (muMax.value !== "") f.max = { mu: muMax.value };
    if (search.value) f.q = search.value;
    return f;
  };
  const browser = rowsBrowser({
    files,
    filter,
    testid: "samples",
    onOpen: (item) => graDetail(item, detail),
    columns: [
      { title: "id", get: (r) => r.id },
      { title: "status", get: (r, item) => (item.file === "accepted.jsonl" ? "accepted" : r.reason || "rejected") },
      { title: "domain", get: (r) => r.domain },
      { title: "round", num: true, get: (r) => r.round },
      { title: "generator", get: (r) => r.generator },
      { title: "μ", num: true, get: (r) => r.mu },
      { title: "σ", num: true, get: (r) => r.sigma },
      { title: "decision", get: (r) => r.decision },
      { title: "instruction", clip: true, get: (r) => clip(r.instruction, 120) },
    ],
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    browser.reload();
  });
  for (const control of [status, reason, domain, model, role, round]) control.addEventListener("change", () => browser.reload());
  add(main, form, el("div", { class: "split" }, el("div", { class: "scroll" }, browser.node), detail));
  browser.reload();
  return { refresh: browser.refresh };
}

function graCharts(main, run) {
  const report = run.report;
  if (!report) {
    add(main, el("p", { class: "muted" }, "report.json is written after the first round."));
    return { refresh: () => rerender(main) };
  }
  const rounds = report.rounds || [];
  const domains = Object.entries(report.domains || {});
  const models = Object.entries(report.models || {});
  const rate = (a, b) => (b ? a / b : 0);
  const boxes = [
    chartBox(
      "Acceptance per round",
      barChart({ labels: rounds.map((r) => `round ${r.round}`), values: rounds.map((r) => rate(r.accepted, r.candidates)), max: 1, format: pct }),
      rounds.map((r) => `round ${r.round}: ${r.accepted}/${r.candidates}`).join(" · ")
    ),
    chartBox(
      "Acceptance per domain",
      barChart({ labels: domains.map(([d]) => d), values: domains.map(([, d]) => d.acceptance || 0), max: 1, format: pct }),
      domains.map(([d, v]) => `${d}: ${v.accepted}/${v.candidates}`).join(" · ")
    ),
    chartBox(
      "Acceptance per generator model",
      barChart({ labels: models.map(([m]) => m), values: models.map(([, m]) => m.generator.acceptance || 0), max: 1, format: pct }),
      models.map(([m, v]) => `${m}: ${v.generator.accepted}/${v.generator.candidates}`).join(" · ")
    ),
    chartBox(
      "Reviewers' agreement with the committee",
      barChart({ labels: models.map(([m]) => m), values: models.map(([, m]) => m.reviewer.decision_agreement || 0), max: 1, format: pct }),
      "Share of a reviewer's scores on the side (≥ τ or below) of the committee's decision."
    ),
  ];
  for (const [name, m] of models) {
    const hist = m.reviewer.score_histogram || {};
    const keys = Object.keys(hist);
    const score = m.reviewer.score || {};
    boxes.push(
      chartBox(
        `Scores given by ${name}`,
        barChart({ labels: keys, values: keys.map((k) => hist[k]), format: (v) => fmt(v, 0) }),
        `${fmt(m.reviewer.reviews)} reviews, mean ${fmt(score.mean)}, std ${fmt(score.std)}`
      )
    );
  }
  const rejected = Object.entries(report.rejected || {});
  add(main, 
    el("p", {}, `${fmt(report.accepted)} accepted of ${fmt(report.candidates)} candidates (${pct(report.acceptance)}); adjudicated ${fmt((report.adjudication || {}).disputed)}, kept ${fmt((report.adjudication || {}).kept)}.`),
    simpleTable(["rejected because", { title: "samples", num: true }], rejected.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt(v)))), { class: "narrow" }),
    el("div", { class: "charts", dataset: { testid: "charts" } }, boxes)
  );
  return { refresh: () => rerender(main) };
}

// -- S3 ------------------------------------------------------------------------------------

// Classification rounds report accuracy; extractive QA, SQuAD's F1 and exact match.
function score(metrics) {
  if (!metrics) return null;
  return metrics.accuracy ?? metrics.f1 ?? null;
}

function scoreText(metrics) {
  if (!metrics) return "-";
  if (metrics.accuracy === undefined && metrics.f1 !== undefined) return `F1 ${pct(metrics.f1)}, EM ${pct(metrics.exact_match)}`;
  return pct(metrics.accuracy);
}

function roundsChart(rounds) {
  const width = 560;
  const height = 230;
  const pad = { l: 44, r: 44, t: 12, b: 30 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const sizes = rounds.map((r) => r.train_size || 0);
  const top = Math.max(1, ...sizes);
  const step = w / Math.max(1, rounds.length);
  const chart = svg("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img", dataset: { testid: "rounds-chart" } });
  chart.style.maxWidth = `${width}px`;
  add(chart, svg("line", { class: "axis", x1: pad.l, y1: pad.t + h, x2: pad.l + w, y2: pad.t + h }));
  add(chart, svg("text", { x: 2, y: pad.t + 8 }, fmt(top)));
  add(chart, svg("text", { x: width - pad.r + 4, y: pad.t + 8 }, "100%"));
  const x = (i) => pad.l + i * step + step / 2;
  const y = (acc) => pad.t + h - h * acc;
  rounds.forEach((r, i) => {
    const bh = (h * (r.train_size || 0)) / top;
    add(chart, svg("rect", { class: "bar alt", x: x(i) - step * 0.3, y: pad.t + h - bh, width: step * 0.6, height: bh }, svg("title", {}, `${r.name}: ${fmt(r.train_size)} training examples`)));
    add(chart, svg("text", { x: x(i), y: pad.t + h + 14, "text-anchor": "middle" }, r.name));
  });
  for (const [key, cls] of [["dev", "line"], ["mining", "line alt"]]) {
    const points = rounds.map((r, i) => (score(r[key]) !== null ? [x(i), y(score(r[key]))] : null)).filter(Boolean);
    if (points.length) {
      add(chart, svg("polyline", { class: cls, points: points.map((p) => p.join(",")).join(" ") }));
      for (const [px, py] of points) add(chart, svg("circle", { class: "dot", cx: px, cy: py, r: 3 }));
    }
  }
  rounds.forEach((r, i) => {
    if (score(r.test) !== null) add(chart, svg("circle", { class: "star", cx: x(i), cy: y(score(r.test)), r: 5 }, svg("title", {}, `test ${scoreText(r.test)}`)));
  });
  return chart;
}

function confusion(title, metrics) {
  if (!metrics || !metrics.confusion) return null;
  const labels = Object.keys(metrics.confusion);
  let most = 1;
  for (const g of labels) for (const p of labels) most = Math.max(most, metrics.confusion[g][p] || 0);
  return el(
    "div",
    { class: "chart panel" },
    el("h3", {}, `${title} (accuracy ${pct(metrics.accuracy)}, n = ${fmt(metrics.n)})`),
    el(
      "table",
      { class: "matrix", dataset: { testid: "confusion" } },
      el("thead", {}, el("tr", {}, el("th", {}, "gold \\ predicted"), labels.map((l) => el("th", {}, l)))),
      el(
        "tbody",
        {},
        labels.map((g) =>
          el(
            "tr",
            {},
            el("th", {}, g),
            labels.map((p) => {
              const n = metrics.confusion[g][p] || 0;
              const cell = el("td", { class: g === p ? "diag" : null }, fmt(n));
              cell.style.background = `rgba(47, 111, 189, ${(0.6 * n) / most})`;
              return cell;
            })
          )
        )
      )
    )
  );
}

function s3Rounds(main, run) {
  const rounds = run.rounds || [];
  const report = run.report;
  add(main, 
    el("p", { class: "muted" }, report ? report.method : "The run is still going: figures appear as its steps finish."),
    rounds.length ? roundsChart(rounds) : el("p", { class: "muted" }, "no round has finished yet"),
    el("p", { class: "muted" }, "bars: training examples · solid: dev accuracy (QA: F1) · dashed: mining · red dot: test, final student"),
    simpleTable(
      ["", { title: "train size", num: true }, { title: "dev", num: true }, { title: "mining", num: true }, { title: "test", num: true }, { title: "errors", num: true }, { title: "added", num: true }],
      rounds.map((r) =>
        el("tr", {}, el("td", {}, r.name), el("td", { class: "num" }, fmt(r.train_size)), el("td", { class: "num" }, scoreText(r.dev)), el("td", { class: "num" }, scoreText(r.mining)), el("td", { class: "num" }, r.test ? scoreText(r.test) : ""), el("td", { class: "num" }, fmt(r.errors)), el("td", { class: "num" }, fmt(r.added)))
      ),
      { dataset: { testid: "rounds" } }
    ),
    el("h3", {}, "Confusion matrices"),
    el(
      "div",
      { class: "charts" },
      rounds.flatMap((r) => [confusion(`${r.name}: dev`, r.dev), confusion(`${r.name}: mining`, r.mining), confusion(`${r.name}: test`, r.test)])
    )
  );
  return { refresh: () => rerender(main) };
}

function textOf(row) {
  if (!row) return "";
  if (row.text_pair !== undefined) return `${row.text}\n⟶ ${row.text_pair}`;
  if (row.question !== undefined) return `${row.context || ""}\n⟶ ${row.question}`;
  return row.text ?? row.completion ?? "";
}

function s3Errors(main, run) {
  const rounds = (run.rounds || []).filter((r) => r.round !== null);
  if (!rounds.length) {
    add(main, el("p", { class: "muted" }, "no round has finished yet"));
    return { refresh: () => rerender(main) };
  }
  const [label, which] = select("round", rounds.map((r) => [String(r.round), r.name]), { name: "round" });
  const out = el("div", { dataset: { testid: "errors" } });
  async function load() {
    clear(out);
    let data;
    try {
      data = await api("s3/round", { r: which.value });
    } catch (error) {
      add(out, errorBox(error));
      return;
    }
    add(out, 
      el("p", { class: "muted" }, `${data.errors.length} mining examples the student got wrong, each beside the examples the LLM wrote from it.`),
      simpleTable(
        ["mined error", "gold", "predicted", "extrapolated examples (kept)", "dropped by cleaning or review"],
        data.errors.map((e) =>
          el(
            "tr",
            { class: "mined", dataset: { id: e.id } },
            el("td", {}, el("pre", { class: "text" }, textOf(e))),
            el("td", {}, e.label ?? ""),
            el("td", {}, e.predicted ?? ""),
            el("td", {}, e.added.map((a) => el("pre", { class: "text added" }, textOf(a)))),
            el("td", {}, e.dropped.map((d) => el("div", { class: "dropped" }, el("span", { class: "tag bad" }, d.reason), " ", clip(d.completion ?? d.text ?? d.error ?? "", 200))))
          )
        )
      )
    );
  }
  which.addEventListener("change", load);
  add(main, el("div", { class: "bar" }, label), out);
  load();
  return { refresh: load };
}

function s3Cleaning(main, run) {
  const dropFiles = run.files.map((f) => f.path).filter((p) => p.endsWith("dropped.jsonl"));
  const counts = el("div", {});
  api("file", { path: "cleaning.json" })
    .then((data) => {
      const steps = Object.entries(data.steps || {});
      const reasons = [...new Set(steps.flatMap(([, s]) => Object.keys(s.dropped || {})))];
      add(counts, 
        simpleTable(
          ["step", { title: "received", num: true }, { title: "kept", num: true }, ...reasons.map((r) => ({ title: r, num: true }))],
          steps.map(([name, s]) => el("tr", {}, el("td", {}, name), el("td", { class: "num" }, fmt(s.received)), el("td", { class: "num" }, fmt(s.kept)), reasons.map((r) => el("td", { class: "num" }, fmt((s.dropped || {})[r] || 0))))),
          { dataset: { testid: "cleaning" } }
        )
      );
    })
    .catch(() => add(counts, el("p", { class: "muted" }, "cleaning.json is written when the run ends.")));
  add(main, el("h3", {}, "Dropped, per step and reason"), counts);
  if (!dropFiles.length) return { refresh: () => rerender(main) };
  const [label, which] = select("file", dropFiles.map((p) => [p, p]), { name: "dropped" });
  const [searchLabel, search] = input("text", { type: "search" });
  const browser = rowsBrowser({
    files: () => [which.value],
    filter: () => (search.value ? { q: search.value } : null),
    testid: "dropped",
    columns: [
      { title: "id", get: (r) => r.id },
      { title: "reason", get: (r) => r.reason },
      { title: "text", clip: true, get: (r) => clip(r.completion ?? r.text ?? r.error, 200) },
    ],
  });
  which.addEventListener("change", () => browser.reload());
  search.addEventListener("change", () => browser.reload());
  add(main, el("h3", {}, "What was dropped"), el("div", { class: "bar" }, label, searchLabel), browser.node);
  browser.reload();
  return { refresh: browser.refresh };
}

function s3Data(main, run) {
  const files = run.files.map((f) => f.path).filter((p) => p.endsWith("train.jsonl") || p === "seed.jsonl" || p.endsWith("added.jsonl"));
  if (!files.length) {
    add(main, el("p", { class: "muted" }, "no data yet"));
    return { refresh: () => rerender(main) };
  }
  const preferred = files.includes("final/train.jsonl") ? "final/train.jsonl" : files[0];
  const [label, which] = select("file", files.map((p) => [p, p]), { name: "data" });
  which.value = preferred;
  const labels = ((run.report || {}).labels) || [];
  const [labelLabel, labelSel] = select("label", [["", "any"], ...labels.map((l) => [l, l])]);
  const [searchLabel, search] = input("text", { type: "search" });
  const browser = rowsBrowser({
    files: () => [which.value],
    filter: () => {
      const f = {};
      if (labelSel.value) f.eq = { label: labelSel.value };
      if (search.value) f.q = search.value;
      return f;
    },
    testid: "data",
    columns: [
      { title: "id", get: (r) => r.id },
      { title: "label", get: (r) => r.label },
      { title: "source", get: (r) => r.source },
      { title: "from", get: (r) => r.from },
      { title: "text", clip: true, get: (r) => clip(textOf(r), 200) },
    ],
  });
  for (const c of [which, labelSel, search]) c.addEventListener("change", () => browser.reload());
  add(main, el("div", { class: "bar" }, label, labelLabel, searchLabel), browser.node);
  browser.reload();
  return { refresh: browser.refresh };
}

// -- run -----------------------------------------------------------------------------------

function promptOf(row) {
  if (typeof row.prompt === "string") return row.prompt;
  const messages = row.messages || (row.body && row.body.messages) || [];
  const last = messages.filter((m) => m.role === "user").pop();
  return last ? (typeof last.content === "string" ? last.content : JSON.stringify(last.content)) : "";
}

function rowDetail(item, panel, title) {
  const row = item.row;
  put(panel, 
    el("h2", { dataset: { testid: "row-id" } }, title(row)),
    row.completion !== undefined ? [el("h3", {}, "Prompt"), el("pre", { class: "text", dataset: { testid: "prompt" } }, promptOf(row)), el("h3", {}, "Completion"), el("pre", { class: "text", dataset: { testid: "completion" } }, row.completion ?? "")] : null,
    row.error ? [el("h3", {}, "Error"), facts(Object.entries(row.error))] : null,
    el("h3", {}, "Row"),
    el("pre", { class: "text", dataset: { testid: "row-json" } }, JSON.stringify(row, null, 2))
  );
}

function searchView(main, files, columns, testid, title) {
  const [searchLabel, search] = input("text", { type: "search", name: "q", placeholder: "search every field…" });
  const apply = el("button", { type: "submit" }, "search");
  const form = el("form", { class: "bar" }, searchLabel, apply);
  const detail = el("div", { class: "panel", dataset: { testid: "detail" } }, el("p", { class: "muted" }, "Choose a row to see it whole."));
  const browser = rowsBrowser({
    files: () => files,
    filter: () => (search.value ? { q: search.value } : null),
    testid,
    onOpen: (item) => rowDetail(item, detail, title),
    columns,
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    browser.reload();
  });
  add(main, form, el("div", { class: "split" }, el("div", { class: "scroll" }, browser.node), detail));
  browser.reload();
  return { refresh: browser.refresh };
}

function runOutputs(main, run) {
  return searchView(
    main,
    [run.output],
    [
      { title: "id", get: (r) => r.id ?? r.custom_id },
      { title: "prompt", clip: true, get: (r) => clip(promptOf(r), 80) },
      { title: "completion", clip: true, get: (r) => clip(r.completion, 120) },
      { title: "model", get: (r) => r.model },
      { title: "latency s", num: true, get: (r) => r.latency_s },
      { title: "finish", get: (r) => r.finish_reason },
    ],
    "outputs",
    (r) => String(r.id ?? r.custom_id ?? "")
  );
}

function runErrors(main, run) {
  if (!run.errors || !run.files.some((f) => f.path === run.errors)) {
    add(main, el("p", { class: "muted" }, "No request failed (there is no errors file)."));
    return { refresh: () => rerender(main) };
  }
  return searchView(
    main,
    [run.errors],
    [
      { title: "id / line", get: (r) => r.id ?? r.custom_id ?? `line ${r.line}` },
      { title: "type", get: (r) => (r.error || {}).type },
      { title: "status", get: (r) => (r.error || {}).status },
      { title: "attempts", num: true, get: (r) => (r.error || {}).attempts },
      { title: "message", clip: true, get: (r) => clip((r.error || {}).message, 160) },
    ],
    "errors",
    (r) => String(r.id ?? r.custom_id ?? `line ${r.line}`)
  );
}

function runLatency(main, run) {
  const box = el("div", { dataset: { testid: "latency" } }, el("p", { class: "muted" }, "reading latencies…"));
  async function load() {
    let data;
    try {
      data = await api("latency", { file: run.output });
    } catch (error) {
      put(box, errorBox(error));
      return;
    }
    if (!data.n) {
      put(box, el("p", { class: "muted" }, "no answers yet"));
      return;
    }
    const seconds = (v) => (v >= 1 ? v.toFixed(2) + " s" : (1000 * v).toFixed(1) + " ms");
    put(box, 
      el("p", {}, `${fmt(data.n)} answers · p50 ${seconds(data.p50)} · p95 ${seconds(data.p95)} · p99 ${seconds(data.p99)} · max ${seconds(data.max)}`),
      chartBox(
        "Latency per request (log-spaced bins)",
        barChart({ labels: data.bins.map((b) => seconds(b.lo)), values: data.bins.map((b) => b.count), width: 720, height: 220, format: (v) => fmt(v, 0) })
      )
    );
  }
  add(main, box);
  load();
  return { refresh: load };
}

// -- files ---------------------------------------------------------------------------------

function filesView(main, run) {
  const view = el("div", { class: "panel", dataset: { testid: "file" } }, el("p", { class: "muted" }, "Choose a file."));
  const list = simpleTable(
    ["file", { title: "bytes", num: true }],
    run.files.map((f) => {
      const tr = el("tr", { class: "pick", dataset: { path: f.path } }, el("td", {}, f.path), el("td", { class: "num" }, fmt(f.size)));
      tr.addEventListener("click", () => openFile(f.path, view));
      return tr;
    }),
    { dataset: { testid: "files" } }
  );
  add(main, el("div", { class: "split" }, list, view));
  return { refresh: () => {} };
}

function openFile(path, view) {
  put(view, el("h2", {}, path));
  if (path.endsWith(".json")) {
    api("file", { path })
      .then((data) => add(view, el("pre", { class: "text" }, JSON.stringify(data, null, 2))))
      .catch((error) => add(view, errorBox(error)));
    return;
  }
  const [searchLabel, search] = input("text", { type: "search" });
  const browser = rowsBrowser({
    files: () => [path],
    filter: () => (search.value ? { q: search.value } : null),
    testid: "file-rows",
    columns: [{ title: "row", clip: true, get: (r) => clip(JSON.stringify(r), 240) }],
  });
  search.addEventListener("change", () => browser.reload());
  add(view, el("div", { class: "bar" }, searchLabel), browser.node);
  browser.reload();
}

// -- the page ------------------------------------------------------------------------------

const VIEWS = {
  gra: [["samples", "Samples", graSamples], ["charts", "Charts", graCharts], ["files", "Files", filesView]],
  s3: [["rounds", "Rounds", s3Rounds], ["errors", "Errors", s3Errors], ["cleaning", "Cleaning", s3Cleaning], ["data", "Data", s3Data], ["files", "Files", filesView]],
  run: [["outputs", "Outputs", runOutputs], ["errors", "Errors", runErrors], ["latency", "Latency", runLatency], ["files", "Files", filesView]],
};

const page = { run: null, view: null, tab: null, signature: "" };

function signature(run) {
  return run.files.map((f) => `${f.path}:${f.size}:${f.mtime}`).join("|");
}

function rerender() {
  show(page.tab);
}

function show(tab) {
  const views = VIEWS[page.run.kind];
  const entry = views.find(([id]) => id === tab) || views[0];
  page.tab = entry[0];
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === page.tab));
  }
  const main = clear(document.getElementById("main"));
  page.view = entry[2](main, page.run) || {};
  if (location.hash.slice(1) !== page.tab) history.replaceState(null, "", "#" + page.tab);
}

async function poll() {
  try {
    const run = await api("run");
    const sig = signature(run);
    const live = document.getElementById("live");
    if (sig !== page.signature) {
      page.signature = sig;
      page.run = run;
      live.textContent = "updated " + new Date().toLocaleTimeString();
      if (page.view && page.view.refresh) page.view.refresh();
    }
  } catch (error) {
    document.getElementById("live").textContent = "the viewer stopped answering";
  }
}

async function start() {
  try {
    page.run = await api("run");
  } catch (error) {
    put(document.getElementById("main"), errorBox(error));
    return;
  }
  page.signature = signature(page.run);
  document.getElementById("kind").textContent = page.run.kind;
  document.getElementById("name").textContent = page.run.name;
  document.title = `${page.run.name} · asyncsynth view`;
  const tabs = document.getElementById("tabs");
  for (const [id, title] of VIEWS[page.run.kind]) {
    add(tabs, el("button", { type: "button", role: "tab", dataset: { tab: id }, onclick: () => show(id) }, title));
  }
  show(location.hash.slice(1));
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
