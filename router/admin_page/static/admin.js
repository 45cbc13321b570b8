// radrouter administration page: reads the admin API, draws with the DOM and inline SVG.
// No inline scripts, no external resources (the page's CSP allows neither); every value from
// the server goes in as text, never as markup.
"use strict";

const POLL_MS = 5000;
const SIGN_IN_URL = "/auth/login?next=%2Fadmin";
const SVG = "http://www.w3.org/2000/svg";
const RETRY_PATHS = { jobs: "/jobs", dispatches: "/dispatches", deliveries: "/deliveries" };
const DEAD_TITLES = {
  jobs: "Failed runs",
  dispatches: "Results not delivered to PACS",
  deliveries: "Worklist messages not delivered (HL7, FHIR)",
};

let session = null;
let configDigest = null;
let checkedText = null; // the text the last successful check passed

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

function when(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "–";
  return new Date(epochSeconds * 1000).toLocaleString([], {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`;
}

function shortUid(uid) {
  return uid.length > 24 ? `…${uid.slice(-20)}` : uid;
}

function jsonHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (session && session.csrf_token) headers["X-CSRF-Token"] = session.csrf_token;
  return headers;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (response.status === 401) {
    window.location.assign(SIGN_IN_URL);
    throw new Error("not signed in");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function postJson(path, body) {
  const response = await fetch(path, { method: "POST", headers: jsonHeaders(), body: JSON.stringify(body) });
  let payload = null;
  try { payload = await response.json(); } catch (error) { payload = null; }
  return { status: response.status, ok: response.ok, payload };
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- overview ---------------------------------------------------------------------------

function showOverview(data) {
  const ready = document.getElementById("ready");
  ready.replaceChildren(
    el("p", { className: data.ready ? "state-ok" : "state-alert" },
      data.ready ? "Ready: listening, database answering, every routed model loaded."
        : "Not ready: see the models and the configuration below."),
  );
  fill(document.getElementById("stages"), data.stages.map((stage) => el(
    "li", { "data-stage": stage.stage },
    el("span", { className: "count" }, stage.count),
    el("strong", {}, stage.stage),
    el("span", { className: "meaning" }, stage.meaning),
    stage.count ? el("span", { className: "age" }, `oldest waiting ${duration(stage.oldest_s)}`) : null,
  )));
  fill(document.getElementById("dead-counts"), Object.entries(data.dead_letters).map(([table, count]) =>
    el("li", { className: count ? "state-alert" : "" }, `${DEAD_TITLES[table]}: ${count}`)));
  document.getElementById("workers").textContent =
    `${data.workers.busy} of ${data.workers.configured} worker(s) running a model.`;
  fill(document.querySelector("#models tbody"), data.models.map((model) => el(
    "tr", {}, el("td", {}, model.name), el("td", {}, model.device), el("td", {}, model.backend),
    el("td", {}, model.max_concurrent ?? "–"))));
  const problems = [
    ...data.models_not_loaded.map((name) => `${name}: routed but not loaded`),
    ...Object.entries(data.model_load_errors).map(([name, error]) => `${name}: ${error}`),
    ...Object.entries(data.plugin_problems).map(([name, error]) => `plugin ${name}: ${error}`),
  ];
  fill(document.getElementById("model-problems"), problems.map((text) => el("li", {}, text)));
  const config = data.config || {};
  const lines = [`Configuration: ${config.file || "?"}.`];
  if (config.running_last_good) lines.push("The LAST GOOD configuration runs: the file was refused at start.");
  if (config.last_change_rejected) lines.push(`Last change refused: ${config.last_change_rejected.problems}`);
  const state = document.getElementById("config-state");
  state.className = config.last_change_rejected || config.running_last_good ? "error" : "";
  state.textContent = lines.join(" ");
}

// --- studies ------------------------------------------------------------------------------

function showStudies(studies) {
  fill(document.querySelector("#study-table tbody"), studies.map((study) => {
    const series = el("ul", { className: "series" }, ...study.series.map((s) => el(
      "li", {},
      `${s.modality} · ${s.series_description || "(no description)"} · ${s.instances} image(s) → `,
      s.rules.length ? el("span", { className: "rule" }, s.rules.join(", ")) : el("em", {}, "no rule"),
      s.qa_sign ? el("span", { className: "state-warning" }, ` · QA series (${s.qa_sign})`) : null,
      " ",
      whyButton(study.study_uid, s.series_uid),
    )));
    const runs = el("ul", { className: "series" }, ...study.jobs.map((job) => el(
      "li", {}, `${job.algorithm}: `,
      el("span", { className: `state-${job.state === "failed" ? "failed" : "none"} verdict-${job.verdict}` },
        job.verdict ? `${job.state}, ${job.verdict.replace("_", " ")}` : job.state),
    )));
    return el("tr", { "data-study": study.study_uid },
      el("td", {}, when(study.last_received_at)),
      el("td", { title: study.study_uid }, shortUid(study.study_uid)),
      el("td", {}, study.state, study.completion_reason ? ` (${study.completion_reason})` : ""),
      el("td", {}, series), el("td", {}, runs));
  }));
}

function whyButton(studyUid, seriesUid) {
  const button = el("button", { type: "button", className: "why" }, "Why");
  button.addEventListener("click", async () => {
    const view = await getJson(`/studies/${encodeURIComponent(studyUid)}`);
    const series = view.series.find((s) => s.series_uid === seriesUid);
    document.getElementById("explanation").hidden = false;
    document.getElementById("explanation-title").textContent =
      `Routing of series ${shortUid(seriesUid)}`;
    document.getElementById("explanation-text").textContent =
      series ? series.route_explanation || "(not routed yet)" : "(series not found)";
    document.getElementById("explanation").scrollIntoView({ block: "nearest" });
  });
  return button;
}

// --- algorithms ---------------------------------------------------------------------------

function showAlgorithms(rows) {
  fill(document.querySelector("#algorithm-table tbody"), rows.map((a) => {
    const perScanner = Object.entries(a.thresholds_by_model).map(([model, t]) => `${model}: ${t}`);
    const threshold = [a.threshold === null ? "plugin default" : String(a.threshold), ...perScanner].join("; ");
    return el("tr", { "data-algorithm": a.name },
      el("td", {}, el("strong", {}, a.name), a.display_name ? el("div", { className: "hint" }, a.display_name) : null,
        a.installed ? null : el("div", { className: "error" }, "not installed")),
      el("td", {}, a.version || "–"),
      el("td", {}, a.purpose ? a.purpose.replace("_", " ") : "–"),
      el("td", {}, a.device, a.load_error ? el("div", { className: "error" }, a.load_error) : null),
      el("td", {}, threshold),
      el("td", {}, a.shadow ? "shadow" : "live"),
      el("td", {}, when(a.last_run)),
      el("td", {}, `${a.runs} (${a.present} present, ${a.not_assessed} not assessed)`),
      el("td", { className: a.failed ? "state-alert" : "" }, percent(a.failure_rate)));
  }));
}

// --- dead letters -------------------------------------------------------------------------

function showDeadLetters(dead) {
  const blocks = Object.entries(dead).map(([table, items]) => {
    const body = items.map((item) => {
      const retry = el("button", { type: "button", className: "retry", "data-table": table, "data-id": item.id }, "Retry");
      retry.addEventListener("click", () => retryItem(table, item.id, retry));
      return el("tr", { "data-item": `${table}-${item.id}` },
        el("td", {}, item.id), el("td", { title: item.study_uid }, shortUid(item.study_uid)),
        el("td", {}, item.target), el("td", {}, `${item.attempts}${item.max_attempts ? ` of ${item.max_attempts}` : ""}`),
        el("td", {}, item.last_error), el("td", {}, retry));
    });
    return el("div", { id: `dead-${table}` },
      el("h3", {}, `${DEAD_TITLES[table]} (${items.length})`),
      items.length ? el("table", {},
        el("thead", {}, el("tr", {}, ...["Id", "Study", "Target", "Attempts", "Last error", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...body)) : el("p", { className: "hint" }, "None."));
  });
  document.getElementById("dead-tables").replaceChildren(...blocks);
}

async function retryItem(table, id, button) {
  button.disabled = true;
  const outcome = await postJson(`${RETRY_PATHS[table]}/${id}/retry`, {});
  const status = document.getElementById("dead-outcome");
  status.className = outcome.ok ? "state-ok" : "error";
  status.textContent = outcome.ok ? `Requeued ${table} item ${id}.`
    : `Not requeued (${outcome.payload && outcome.payload.detail ? outcome.payload.detail : outcome.status}).`;
  await refresh();
}

// --- configuration ------------------------------------------------------------------------

async function loadConfig() {
  const config = await getJson("/api/admin/config");
  configDigest = config.digest;
  checkedText = null;
  const text = document.getElementById("config-text");
  text.value = config.text;
  text.readOnly = !config.editable;
  document.getElementById("config-file").textContent = config.editable
    ? `File: ${config.file}. Check a change, read its diff and dry run, then apply it: it is written to the file and runs at once.`
    : "The router runs its shipped default configuration (no file): start it with --config FILE to change it here.";
  document.getElementById("config-apply").disabled = true;
  await loadHistory();
}

async function checkConfig() {
  const text = document.getElementById("config-text").value;
  const studies = Number(document.getElementById("dry-run-studies").value) || 20;
  const outcome = document.getElementById("config-outcome");
  outcome.textContent = "Checking…";
  const answer = await postJson("/api/admin/config/check", { text, studies });
  if (!answer.ok) {
    outcome.textContent = `Not checked (HTTP ${answer.status}).`;
    return;
  }
  const check = answer.payload;
  fill(document.getElementById("config-problems"), check.problems.map((p) => el("li", {}, p)));
  document.getElementById("config-diff").textContent = check.diff || "(no change)";
  document.getElementById("config-diff-box").open = Boolean(check.diff);
  const table = document.getElementById("dry-run");
  if (check.dry_run) {
    const changed = check.dry_run.series.filter((s) => s.changed).length;
    table.hidden = false;
    fill(table.querySelector("tbody"), check.dry_run.series.map((s) => el(
      "tr", { className: s.changed ? "changed" : "" },
      el("td", { title: s.study_uid }, shortUid(s.study_uid)),
      el("td", {}, `${s.modality} · ${s.series_description || "(no description)"}`),
      el("td", {}, s.before), el("td", { title: s.explanation }, s.after))));
    outcome.textContent = `${check.valid ? "Valid" : "Not valid"}. Dry run: ${check.dry_run.series.length} series of ` +
      `${check.dry_run.studies} studies, ${changed} routed differently` +
      `${check.dry_run.unreadable ? `, ${check.dry_run.unreadable} not readable` : ""}.`;
  } else {
    table.hidden = true;
    outcome.textContent = "Not valid: the file does not load.";
  }
  outcome.className = check.valid ? "state-ok" : "error";
  checkedText = check.valid && check.diff ? text : null;
  document.getElementById("config-apply").disabled = checkedText === null;
}

async function applyConfig() {
  const text = document.getElementById("config-text").value;
  const outcome = document.getElementById("config-outcome");
  if (text !== checkedText) {
    outcome.textContent = "The text changed since it was checked: check it again.";
    document.getElementById("config-apply").disabled = true;
    return;
  }
  const answer = await postJson("/api/admin/config/apply", { text, based_on: configDigest });
  if (answer.ok) {
    outcome.className = "state-ok";
    outcome.textContent = "Applied: the file is written and the new configuration runs.";
    await loadConfig();
    return;
  }
  const detail = answer.payload && answer.payload.detail;
  const problems = detail && detail.problems ? detail.problems : [`HTTP ${answer.status}`];
  outcome.className = "error";
  outcome.textContent = answer.status === 409 ? "Not applied: the file changed meanwhile." : "Not applied.";
  fill(document.getElementById("config-problems"), problems.map((p) => el("li", {}, p)));
  document.getElementById("config-apply").disabled = true;
}

async function loadHistory() {
  const changes = await getJson("/api/admin/config/history?limit=20");
  fill(document.querySelector("#config-history tbody"), changes.map((c) => el(
    "tr", {}, el("td", {}, when(c.at)), el("td", {}, c.editor), el("td", {}, c.source),
    el("td", { className: c.accepted ? "state-ok" : "state-alert" }, c.accepted ? "applied" : `refused: ${c.problems}`),
    el("td", {}, c.diff ? el("details", {}, el("summary", {}, "diff"), el("pre", {}, c.diff)) : "–"))));
}

// --- drift ----------------------------------------------------------------------------------

function histogram(title, baseline, current, labels) {
  const width = 260, height = 110, pad = 18;
  const chart = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  const count = Math.max(baseline.length, current.length, 1);
  const top = Math.max(...baseline, ...current, 0.01);
  const slot = (width - 2 * pad) / count;
  for (let i = 0; i < count; i += 1) {
    const x = pad + i * slot;
    for (const [values, cls, offset] of [[baseline, "baseline", 0], [current, "current", slot / 2]]) {
      const value = values[i] || 0;
      const h = ((height - 2 * pad) * value) / top;
      chart.append(svg("rect", { class: cls, x: x + offset + 1, y: height - pad - h, width: Math.max(slot / 2 - 2, 1), height: h }));
    }
    if (labels && labels[i] !== undefined && count <= 12) {
      chart.append(svg("text", { x: x + 2, y: height - 4 }, String(labels[i]).slice(0, 8)));
    }
  }
  chart.append(svg("line", { class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }));
  return el("figure", { className: "plot" }, chart, el("figcaption", {}, `${title} (grey: baseline, blue: now)`));
}

function lineChart(title, points) {
  const width = 320, height = 130, pad = 22;
  const chart = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  if (!points.length) return el("figure", { className: "plot" }, chart, el("figcaption", {}, `${title}: no points`));
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const sx = (x) => pad + ((width - 2 * pad) * (x - x0)) / (x1 - x0 || 1);
  const sy = (y) => height - pad - ((height - 2 * pad) * (y - y0)) / (y1 - y0);
  chart.append(svg("line", { class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }));
  chart.append(svg("text", { x: 2, y: pad }, y1.toFixed(1)));
  chart.append(svg("text", { x: 2, y: height - pad }, y0.toFixed(1)));
  chart.append(svg("polyline", { class: "line", points: points.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") }));
  for (const p of points) {
    chart.append(svg("circle", { class: p.bad ? "fail" : "pass", cx: sx(p.x), cy: sy(p.y), r: 3.5 }));
  }
  return el("figure", { className: "plot" }, chart, el("figcaption", {}, title));
}

const FEATURE_LABELS = {
  scanner_model: "scanner model", kernel: "kernel", kvp: "kVp", slice_thickness_mm: "slice thickness (mm)",
  pixel_spacing_mm: "pixel spacing (mm)", not_assessed_rate: "not-assessed rate",
  not_assessed_reason: "not-assessed reasons", positive_rate: "positive rate", probability: "probabilities",
  agreement: "readers' agreement",
};

function binLabels(histogram) {
  if (histogram.categories) return histogram.categories;
  if (!histogram.edges) return [];
  return histogram.edges.slice(0, -1).map((edge) => Number(edge).toPrecision(3));
}

function showDrift(report) {
  const box = document.getElementById("drift");
  const algorithms = report.algorithms || [];
  if (!algorithms.length) {
    box.replaceChildren(el("p", { className: "hint" }, "No algorithm has results to compare yet."));
    return;
  }
  box.replaceChildren(...algorithms.map((a) => {
    const rows = a.features.map((f) => el("tr", { "data-feature": f.feature },
      el("td", {}, FEATURE_LABELS[f.feature] || f.feature), el("td", {}, f.kind),
      el("td", {}, f.psi === null ? "–" : f.psi.toFixed(3)),
      el("td", {}, f.p_value === null ? "–" : Number(f.p_value).toPrecision(2)),
      el("td", {}, f.baseline_rate === null ? `${f.baseline_n}` : `${percent(f.baseline_rate)} of ${f.baseline_n}`),
      el("td", {}, f.current_rate === null ? `${f.current_n}` : `${percent(f.current_rate)} of ${f.current_n}`),
      el("td", { className: `state-${f.state}` }, f.state.replace("_", " ")), el("td", {}, f.reason)));
    const plots = a.features.filter((f) => f.histogram && (f.state === "alert" || f.state === "warning" || f.kind === "output"))
      .map((f) => histogram(FEATURE_LABELS[f.feature] || f.feature, f.histogram.baseline, f.histogram.current, binLabels(f.histogram)));
    for (const [key, title] of [["positive_rate", "positive rate per day"],
      ["not_assessed_rate", "not-assessed rate per day"], ["probability_mean", "mean probability per day"]]) {
      const days = a.daily.filter((d) => d[key] !== null);
      if (days.length > 1) plots.push(lineChart(title, days.map((d, i) => ({ x: i, y: d[key], bad: false }))));
    }
    const baseline = a.baseline
      ? `Baseline: ${a.baseline.results} results from ${when(a.baseline.period_start)} to ${when(a.baseline.period_end)}, recorded by ${a.baseline.recorded_by}.`
      : "No baseline recorded: record one at go-live (the last 30 days of results).";
    const record = el("button", { type: "button", className: "record-baseline" }, "Record the last 30 days as the baseline");
    record.addEventListener("click", async () => {
      const answer = await postJson(`/api/drift/${encodeURIComponent(a.algorithm)}/baseline?days=30`, {});
      const detail = answer.payload && answer.payload.detail;
      outcome.textContent = answer.ok ? "Baseline recorded." : `Not recorded: ${detail || `HTTP ${answer.status}`}`;
      outcome.className = answer.ok ? "state-ok" : "error";
      if (answer.ok) refresh();
    });
    const outcome = el("span", { role: "status" });
    return el("div", { className: "drift-algorithm", "data-algorithm": a.algorithm },
      el("h3", {}, `${a.algorithm}: `, el("span", { className: `state-${a.state}` }, a.state.replace("_", " "))),
      el("p", {}, a.reason),
      el("p", { className: "hint" }, `Window: ${a.window_results} results since ${when(a.window_start)}; `
        + `positive rate ${percent(a.positive_rate)}, not assessed ${percent(a.not_assessed_rate)}, `
        + `readers' agreement ${percent(a.agreement_rate)} (${a.feedback} feedback). ${baseline} `, record, " ", outcome),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Feature", "Kind", "PSI", "p", "Baseline", "Now", "State", "Why"]
        .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows)),
      el("div", {}, ...plots));
  }));
}

// --- usage and QA ---------------------------------------------------------------------------

async function loadUsage() {
  const month = document.getElementById("usage-month").value;
  const query = month ? `?month=${encodeURIComponent(month)}` : "";
  document.getElementById("usage-csv").setAttribute("href", `/api/usage.csv${query}`);
  const rows = await getJson(`/api/usage${query}`);
  fill(document.querySelector("#usage-table tbody"), rows.map((r) => el(
    "tr", {}, ...[r.month, r.algorithm, r.source_ae, r.site, r.kind, r.outcome.replace("_", " "), r.studies, r.series, r.runs]
      .map((v) => el("td", {}, v)))));
}

function showQaTrend(trends) {
  const box = document.getElementById("qa-trend");
  if (!trends.length) {
    box.replaceChildren(el("p", { className: "hint" }, "No quality-control results yet."));
    return;
  }
  box.replaceChildren(...trends.map((trend) => {
    const scanner = Object.values(trend.scanner).filter(Boolean).join(" · ") || "unknown scanner";
    const names = [...new Set(trend.points.flatMap((p) => Object.keys(p.measurements)))];
    const plots = names.map((name) => lineChart(
      name,
      trend.points.filter((p) => name in p.measurements).map((p) => ({ x: p.at, y: p.measurements[name], bad: p.verdict === "present" })),
    ));
    const failed = trend.points.filter((p) => p.verdict === "present").length;
    return el("div", { className: "qa-scanner" },
      el("h3", {}, `${trend.algorithm} · ${scanner}`),
      el("p", { className: failed ? "error" : "hint" },
        `${trend.points.length} run(s), ${failed} out of tolerance; last ${when(trend.points[trend.points.length - 1].at)}.`),
      el("div", {}, ...plots));
  }));
}

// --- refresh --------------------------------------------------------------------------------

async function optional(path, show) {
  try {
    show(await getJson(path));
  } catch (error) {
    return error.message;
  }
  return null;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [overviewData, studies, algorithms, dead] = await Promise.all([
      getJson("/api/admin/overview"), getJson("/api/admin/studies?limit=20"),
      getJson("/api/admin/algorithms"), getJson("/api/admin/dead-letters"),
    ]);
    showOverview(overviewData);
    showStudies(studies);
    showAlgorithms(algorithms);
    showDeadLetters(dead);
    const failures = (await Promise.all([
      optional("/api/drift", showDrift), optional("/api/qa/trend", showQaTrend),
    ])).filter(Boolean);
    status.classList.toggle("error", failures.length > 0);
    status.textContent = `Updated ${new Date().toLocaleTimeString()}` +
      (failures.length ? ` (not shown: ${failures.join("; ")})` : ".");
  } catch (error) {
    status.classList.add("error");
    status.textContent = `Could not refresh (${error.message}); retrying.`;
  }
}

async function loadSession() {
  const response = await fetch("/auth/session", { cache: "no-store" });
  if (response.status === 401) {
    window.location.assign(SIGN_IN_URL);
    throw new Error("not signed in");
  }
  if (!response.ok) return null;
  const who = await response.json();
  return who.authentication ? who : null;
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    session = await loadSession();
  } catch (error) {
    return;
  }
  document.getElementById("who").textContent = session
    ? `Signed in as ${session.user} (${session.roles.join(", ")}).`
    : "No authentication: this page answers on this host's loopback only.";
  document.getElementById("config-check").addEventListener("click", checkConfig);
  document.getElementById("config-apply").addEventListener("click", applyConfig);
  document.getElementById("config-reload").addEventListener("click", loadConfig);
  document.getElementById("config-text").addEventListener("input", () => {
    document.getElementById("config-apply").disabled = true;
  });
  document.getElementById("usage-month").addEventListener("change", () => loadUsage().catch(() => {}));
  await Promise.all([refresh(), loadConfig().catch(() => {}), loadUsage().catch(() => {})]);
  setInterval(refresh, POLL_MS);
});
