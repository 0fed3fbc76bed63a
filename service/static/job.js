// Job page: live progress over SSE, the Pareto scatter and per-layer heat map (Plotly.js, shipped
// with the plotly Python package), the front points with their qconfig downloads, and the trials.
import {
  TERMINAL, api, download, el, eventSource, fmtCost, fmtDuration, fmtQuality, fmtTime,
  formatRank, initTokenBar, progressBar, showMessage, statusBadge, weightBits,
} from "/static/common.js";

const jobId = decodeURIComponent(location.pathname.split("/")[2]);
const PARETO_DEBOUNCE_MS = 1000;
const POLL_MS = 3000;
const PLOT_CONFIG = { responsive: true, displaylogo: false };
// colour per format, cheapest (warm) to dearest (cool); indexed by formatRank
const FORMAT_COLOURS = ["#d73027", "#fc8d59", "#fee090", "#e0f3f8", "#91bfdb", "#4575b4", "#999999"];

const state = { job: null, pareto: null, trials: new Map(), sort: { key: "number", descending: false } };
const costAxis = document.getElementById("cost-axis");

document.getElementById("job-id").textContent = jobId;
document.title = `mixq · job ${jobId}`;

// ---- the job summary ----

function pinSummary(spec) {
  const pins = (spec.pins || []).map((p) => `${p.match} = ${p.format ?? "free"}`);
  const firstLast = spec.pin_first_last ? `first/last = ${spec.pin_first_last}` : "first/last free";
  return [firstLast, ...pins].join("; ");
}

// a blank formats list means the profile's (search.study.space.searched_formats): say so, and which
function formatsText(spec) {
  if (spec.formats && spec.formats.length) return spec.formats.join(", ");
  const formats = state.meta?.profile_formats?.[spec.profile];
  return formats ? `profile default (${formats.join(", ")})` : "profile default";
}

// what a panel still waits for, before the first trial has finished
function waitingFor() {
  const job = state.job;
  if (!job || job.status === "queued") return "waiting for a worker to start the job";
  if (TERMINAL.has(job.status)) return `the job ${job.status} before any trial finished`;
  const phase = job.progress?.phase;
  return `waiting for the first trial to finish (the uniform baselines train first${phase ? `; now: ${phase}` : ""})`;
}

// a panel's note: shown with its text, hidden when there is none
function setEmpty(id, text) {
  const note = document.getElementById(id);
  note.textContent = text;
  note.hidden = !text;
}

function renderJob(job) {
  state.job = job;
  document.getElementById("job-status").replaceChildren(statusBadge(job.status));
  document.getElementById("job-progress").replaceChildren(progressBar(job.progress));
  const spec = job.spec || {};
  const c = job.counts || {};
  const facts = [
    ["workload", spec.workload],
    ["profile", spec.profile],
    ["formats", formatsText(spec)],
    ["cost objectives", (spec.cost_objectives || []).join(", ")],
    ["pins", pinSummary(spec)],
    ["metric", job.metric ? `${job.metric} (${job.higher_is_better ? "higher" : "lower"} is better)` : "–"],
    ["fp32 quality", fmtQuality(job.fp32_quality)],
    ["best so far", job.best ? `${fmtQuality(job.best.quality)} (trial #${job.best.trial_number})` : "–"],
    ["trials", `${c.complete ?? 0} complete, ${c.infeasible ?? 0} infeasible, ${c.failed ?? 0} failed `
      + `(${c.retried ?? 0} retried), ${c.running ?? 0} running`],
    ["Optuna study", el("span", {}, el("code", { id: "study-name" }, `mixq-job-${job.id}`), " · ",
      el("a", { href: "https://github.com/optuna/optuna-dashboard#getting-started", id: "optuna-dashboard-link",
        title: "optuna-dashboard <the server's MIXQ_DATABASE_URL> opens it (docs/dashboard.md, optuna-dashboard)",
        rel: "noopener" }, "open it in optuna-dashboard"),
      " (", el("code", {}, "optuna-dashboard <MIXQ_DATABASE_URL>"), ")")],
    ["created", fmtTime(job.created_at)],
    ["started", fmtTime(job.started_at)],
    ["finished", fmtTime(job.finished_at)],
  ];
  document.getElementById("job-facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")]),
  );
  showMessage(document.getElementById("job-error"), job.error ? `error: ${job.error}` : "");
  document.getElementById("job-phase").textContent = phaseText(job);
  document.getElementById("job-spec").textContent = JSON.stringify(spec, null, 2);
  document.getElementById("cancel-job").hidden = TERMINAL.has(job.status);
  renderFidelity(job);
}

// ---- the fidelity check: do the short first-rung runs rank the front as the long runs do? ----

function renderFidelity(job) {
  const box = document.getElementById("fidelity");
  const f = job.fidelity;
  const rungs = job.spec?.fidelity_rungs;  // null: chosen when the search starts (search.spec.resolve_fidelity)
  if (!f) {
    const text = rungs && rungs.length > 1
      ? `The search trains maps at ${rungs.length} lengths (fidelity_rungs [${rungs.join(", ")}]); `
        + "the check of the short runs against the long ones comes when it ends."
      : !rungs && !TERMINAL.has(job.status)
        ? "fidelity_rungs automatic: a model with 10 or more free layers under a time or QAT-step budget has "
          + "its better maps trained again 3× longer, and the check of the short runs against the long ones "
          + "comes when the search ends; otherwise every map is trained at one length."
        : "No fidelity check: every map was trained at one length (qat_steps). To check that short runs rank "
          + "maps as long ones do, submit with fidelity_rungs, e.g. [1, 3]: the best maps are trained again "
          + "3× longer and the two rankings compared.";
    box.replaceChildren(el("p", { class: "muted", id: "fidelity-none" }, text));
    return;
  }
  const longSteps = [...new Set(f.points.map((p) => p.long_qat_steps))];
  const longHeader = longSteps.length === 1 ? `long quality @ ${longSteps[0]} steps` : "long quality (steps)";
  const table = el("table", { class: "grid", id: "fidelity-table" },
    el("thead", {}, el("tr", {}, ...["trial", `short quality @ ${f.short_qat_steps} steps`, longHeader]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, ...f.points.map((p) => el("tr", { dataset: { trial: p.number } },
      el("td", {}, `#${p.number}`),
      el("td", {}, fmtQuality(p.short_quality)),
      el("td", {}, longSteps.length === 1 ? fmtQuality(p.long_quality)
        : `${fmtQuality(p.long_quality)} (${p.long_qat_steps})`),
    ))),
  );
  const tau = f.kendall_tau === null || f.kendall_tau === undefined
    ? "Kendall tau: – (needs two or more front points trained at a higher rung)"
    : `Kendall tau between the short and long rankings: ${f.kendall_tau.toFixed(3)} (1 = same order)`;
  box.replaceChildren(
    f.warning ? el("div", { class: "message warn", role: "alert", id: "fidelity-warning" }, `warning: ${f.warning}`) : "",
    el("p", { id: "fidelity-tau" }, tau),
    f.points.length ? el("div", { class: "table-scroll" }, table)
      : el("p", { class: "muted" }, "no front point reached a higher rung"),
  );
}

// "re-evaluating front point 2/3 · elapsed 1m05s · about 40s left": the counter alone stops at n/n
function phaseText(job) {
  const p = job.progress || {};
  if (!p.phase || TERMINAL.has(job.status)) return "";
  const parts = [p.message ? `${p.phase}: ${p.message}` : p.phase];
  // the report is as old as reported_at: count the time since then
  const since = p.reported_at ? Math.max(0, (Date.now() - new Date(p.reported_at).getTime()) / 1000) : 0;
  if (p.elapsed_s !== null && p.elapsed_s !== undefined) parts.push(`elapsed ${fmtDuration(p.elapsed_s + since)}`);
  if (p.eta_s !== null && p.eta_s !== undefined) parts.push(`about ${fmtDuration(Math.max(p.eta_s - since, 0))} left`);
  return parts.join(" · ");
}

document.getElementById("cancel-job").addEventListener("click", async () => {
  renderJob(await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }));
});

// ---- trials ----

async function loadTrials() {
  const limit = 200;
  for (let offset = 0; ; offset += limit) {
    const page = await api(`/v1/jobs/${jobId}/trials?sort=number&limit=${limit}&offset=${offset}`);
    for (const trial of page.items) state.trials.set(trial.number, trial);
    if (offset + limit >= page.total) break;
  }
  renderTrials();
}

function costNames() {
  return state.pareto?.cost_objectives || state.job?.spec?.cost_objectives || [];
}

// the front as /pareto reports it: the star and the front table change together
function onFront(t) {
  return state.pareto ? state.pareto.points.some((p) => p.number === t.number) : t.on_front;
}

function belowInt8(t) {
  return Object.entries(t.assignment || {}).filter(([, fmt]) => (weightBits(fmt) ?? 8) < 8).map(([fqn]) => fqn);
}

// column key -> [header, value for sorting and CSV]
function trialColumns() {
  return [
    ["number", "#", (t) => t.number],
    ["state", "state", (t) => t.state],
    ["source", "source", (t) => t.source ?? ""],
    ["quality", "quality", (t) => t.quality],
    ["quality_std", "± std", (t) => t.quality_std],
    ["n_evaluations", "runs", (t) => t.n_evaluations],
    ...costNames().map((name) => [`cost:${name}`, name, (t) => t.costs?.[name]]),
    ["feasible", "feasible", (t) => (t.state !== "complete" ? "" : t.feasible ? "yes" : "no")],
    ["on_front", "front", (t) => (onFront(t) ? "yes" : "")],
    ["duration_s", "time (s)", (t) => t.duration_s],
    ["formats", "formats", (t) => t.assignment_summary],
    ["below_int8", "layers below int8", (t) => belowInt8(t).join(" ")],
  ];
}

function sortedTrials() {
  const column = trialColumns().find(([key]) => key === state.sort.key) || trialColumns()[0];
  const value = column[2];
  const sign = state.sort.descending ? -1 : 1;
  return [...state.trials.values()].sort((a, b) => {
    const [x, y] = [value(a), value(b)];
    if (x === y) return a.number - b.number;
    if (x === null || x === undefined) return 1;  // missing values last either way
    if (y === null || y === undefined) return -1;
    return sign * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
  });
}

function sortBy(key) {
  state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : false };
  renderTrials();
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

document.getElementById("trials-csv").addEventListener("click", () => {
  const columns = trialColumns();
  const lines = [columns.map(([, header]) => csvCell(header)).join(","),
    ...sortedTrials().map((t) => columns.map(([, , value]) => csvCell(value(t))).join(","))];
  const url = URL.createObjectURL(new Blob([`${lines.join("\n")}\n`], { type: "text/csv" }));
  const link = el("a", { href: url, download: `mixq-${jobId}-trials.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});

function renderTrials() {
  const costs = costNames();
  const table = document.getElementById("trials-table");
  table.tHead.replaceChildren(el("tr", {}, ...trialColumns().map(([key, header]) => {
    const sorted = state.sort.key === key;
    return el("th", {
      class: "sortable", tabindex: "0", dataset: { sort: key },
      "aria-sort": sorted ? (state.sort.descending ? "descending" : "ascending") : "none",
      onclick: () => sortBy(key), onkeydown: (e) => { if (e.key === "Enter") sortBy(key); },
    }, header, sorted ? (state.sort.descending ? " ▼" : " ▲") : "");
  })));
  const rows = sortedTrials().map((t) => el("tr",
    { class: [onFront(t) ? "front" : "", t.feasible === false ? "infeasible" : ""].join(" "),
      dataset: { trial: t.number } },
    el("td", {}, String(t.number)),
    el("td", {}, t.state),
    el("td", {}, t.source ?? "–"),
    el("td", {}, fmtQuality(t.quality)),
    el("td", {}, fmtQuality(t.quality_std)),
    el("td", {}, String(t.n_evaluations ?? "–")),
    ...costs.map((name) => el("td", {}, fmtCost(t.costs?.[name]))),
    el("td", {}, t.state !== "complete" ? "–" : t.feasible ? "yes" : "no"),
    el("td", {}, onFront(t) ? "★" : ""),
    el("td", {}, t.duration_s === null || t.duration_s === undefined ? "–" : t.duration_s.toFixed(1)),
    el("td", { title: layerLines(t.assignment).join("\n") }, t.assignment_summary),
    el("td", { class: "below-int8" }, belowInt8(t).join(", ") || "–"),
  ));
  table.tBodies[0].replaceChildren(...rows);
  if (!rows.length) {
    table.tBodies[0].append(el("tr", {}, el("td", { colspan: trialColumns().length, class: "muted", id: "trials-empty" },
      `No trials yet: ${waitingFor()}.`)));
  }
  document.getElementById("trial-count").textContent = `(${state.trials.size})`;
  renderFailed();
}

// failed trials and why: the error text is the search's (or the workload's) own words, shown as text
function renderFailed() {
  const failed = [...state.trials.values()].filter((t) => t.state === "failed").sort((a, b) => a.number - b.number);
  document.getElementById("failed-panel").hidden = !failed.length;
  document.getElementById("failed-count").textContent = `(${failed.length})`;
  const table = document.getElementById("failed-table");
  table.tHead.replaceChildren(el("tr", {}, ...["#", "retried", "formats", "error"].map((h) => el("th", {}, h))));
  table.tBodies[0].replaceChildren(...failed.map((t) => el("tr", { dataset: { trial: t.number } },
    el("td", {}, String(t.number)),
    el("td", {}, t.retried ? "yes" : "no"),
    el("td", { title: layerLines(t.assignment).join("\n") }, t.assignment_summary || "–"),
    el("td", { class: "trial-error" }, t.error ?? "–"),
  )));
}

// ---- Pareto scatter ----

function layerLines(assignment) {
  const order = state.pareto ? state.pareto.layers.map((l) => l.fqn) : Object.keys(assignment || {});
  return order.filter((fqn) => assignment && fqn in assignment).map((fqn) => `${fqn}: ${assignment[fqn]}`);
}

function hoverText(t) {
  const spread = t.n_evaluations > 1 ? ` ± ${fmtQuality(t.quality_std)} over ${t.n_evaluations} runs` : " (1 run)";
  return [
    `<b>trial #${t.number}</b> (${t.source ?? "?"})${t.feasible ? "" : " <i>infeasible</i>"}`,
    `quality ${fmtQuality(t.quality)}${spread}`,
    ...Object.entries(t.costs || {}).map(([k, v]) => `${k} ${fmtCost(v)}`),
    "",
    ...layerLines(t.assignment),
  ].join("<br>");
}

function scatterTrace(name, trials, cost, style) {
  return {
    type: "scatter", name, ...style,
    x: trials.map((t) => t.costs[cost]),
    y: trials.map((t) => t.quality),
    customdata: trials.map((t) => t.number),
    text: trials.map(hoverText),
    hovertemplate: "%{text}<extra>%{fullData.name}</extra>",
  };
}

function renderPareto() {
  const p = state.pareto;
  const cost = costAxis.value || p.cost_objectives[0];
  const frontNumbers = new Set(p.points.map((t) => t.number));
  const others = p.trials.filter((t) => !frontNumbers.has(t.number));
  const front = [...p.points].sort((a, b) => a.costs[cost] - b.costs[cost]);
  // with two objectives the front is not a curve in one cost's projection: markers only
  const frontMode = p.cost_objectives.length === 1 ? "lines+markers" : "markers";
  const traces = [
    scatterTrace("feasible", others.filter((t) => t.feasible), cost,
      { mode: "markers", marker: { color: "#4c78a8", size: 8, opacity: 0.75 } }),
    scatterTrace("infeasible", others.filter((t) => !t.feasible), cost,
      { mode: "markers", marker: { color: "#9e9e9e", size: 9, symbol: "x" } }),
    scatterTrace("Pareto front", front, cost, {
      mode: frontMode,
      line: { color: "#e45756", width: 2 },
      marker: { color: "#e45756", size: 13, symbol: "diamond", line: { color: "#222", width: 1 } },
      error_y: { type: "data", array: front.map((t) => t.quality_std || 0), visible: true, color: "#e45756" },
    }),
  ];
  const shapes = [];
  const annotations = [];
  if (p.fp32_quality !== null && p.fp32_quality !== undefined) {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: p.fp32_quality, y1: p.fp32_quality,
      line: { dash: "dot", color: "#555", width: 1 } });
    annotations.push({ xref: "paper", x: 1, y: p.fp32_quality, text: "fp32", showarrow: false,
      xanchor: "right", yanchor: "bottom", font: { color: "#555" } });
    const drop = state.job?.spec?.max_quality_drop;
    if (drop !== null && drop !== undefined) {
      // feasible trials lie on the fp32 side of this line
      const limit = p.higher_is_better === false ? p.fp32_quality + drop : p.fp32_quality - drop;
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: limit, y1: limit, name: "quality-drop limit",
        line: { dash: "dash", color: "#c0392b", width: 1 } });
      annotations.push({ xref: "paper", x: 0, y: limit, text: `max drop ${drop}`, showarrow: false,
        xanchor: "left", yanchor: "top", font: { color: "#c0392b" } });
    }
  }
  const better = p.higher_is_better ? "higher is better" : "lower is better";
  Plotly.react("pareto", traces, {
    margin: { t: 20, r: 20, b: 50, l: 70 },
    height: 420,
    xaxis: { title: { text: `${cost} (lower is cheaper)` }, zeroline: false },
    yaxis: { title: { text: `${p.metric} (${better})` }, zeroline: false },
    legend: { orientation: "h", y: 1.08 },
    hoverlabel: { align: "left" },
    shapes, annotations,
  }, PLOT_CONFIG);
}

// ---- per-layer heat map of the front ----

function renderHeatmap() {
  const p = state.pareto;
  const cost = costAxis.value || p.cost_objectives[0];
  const layers = [...p.layers].sort((a, b) => a.index - b.index);
  const front = [...p.points].sort((a, b) => a.costs[cost] - b.costs[cost]);
  const formats = [...new Set(front.flatMap((t) => Object.values(t.assignment)))]
    .sort((a, b) => formatRank(a) - formatRank(b));
  const k = Math.max(formats.length, 1);
  // a discrete colour scale: band i of k is one flat colour
  const colorscale = formats.flatMap((fmt, i) => {
    const colour = FORMAT_COLOURS[Math.min(formatRank(fmt), FORMAT_COLOURS.length - 1)];
    return [[i / k, colour], [(i + 1) / k, colour]];
  });
  const rowLabels = front.map((t) => `#${t.number} · ${fmtCost(t.costs[cost])}`);
  const pinNote = (l) => (l.pinned ? `pinned${l.pin_reason ? `: ${l.pin_reason}` : ""}` : "free");
  const trace = {
    type: "heatmap",
    x: layers.map((l) => l.fqn),
    y: rowLabels,
    z: front.map((t) => layers.map((l) => formats.indexOf(t.assignment[l.fqn]))),
    text: front.map((t) => layers.map((l) => t.assignment[l.fqn] ?? "?")),
    customdata: front.map(() => layers.map((l) => `${l.kind}, ${pinNote(l)}`)),
    texttemplate: "%{text}",
    hovertemplate: "%{y}<br>%{x} (%{customdata})<br><b>%{text}</b><extra></extra>",
    colorscale: colorscale.length ? colorscale : [[0, "#ccc"], [1, "#ccc"]],
    zmin: -0.5, zmax: k - 0.5,
    xgap: 2, ygap: 2,
    colorbar: { tickvals: formats.map((_, i) => i), ticktext: formats, title: { text: "format" } },
  };
  // outline the pinned columns
  const shapes = layers.flatMap((l, j) => (l.pinned ? [{
    type: "rect", xref: "x", yref: "paper", x0: j - 0.5, x1: j + 0.5, y0: 0, y1: 1,
    line: { color: "#111", width: 2, dash: "dot" },
  }] : []));
  Plotly.react("heatmap", [trace], {
    margin: { t: 20, r: 20, b: 120, l: 130 },
    height: 180 + 32 * front.length,
    xaxis: {
      tickmode: "array", tickvals: layers.map((l) => l.fqn), tickangle: -35,
      ticktext: layers.map((l) => (l.pinned ? `${l.fqn} [pinned]` : l.fqn)),
      title: { text: "layer (execution order)" },
    },
    yaxis: { title: { text: `front point · ${cost}` }, autorange: "reversed", type: "category" },
    shapes,
  }, PLOT_CONFIG);
}

// ---- sensitivity sweep and history ----

// The sweep's trials (all int8 but one layer in int4) against the all-int8 baseline: quality lost per layer.
function sensitivityRows() {
  const trials = state.pareto.trials;
  const allInt8 = trials.find((t) => Object.values(t.assignment).every((f) => f === "int8"));
  if (!allInt8) return [];
  const sign = state.pareto.higher_is_better === false ? -1 : 1;
  return trials.filter((t) => t.source === "sensitivity").flatMap((t) => {
    const probed = Object.entries(t.assignment).filter(([, f]) => f !== "int8");
    if (probed.length !== 1) return [];
    return [{ fqn: probed[0][0], format: probed[0][1], trial: t.number, lost: sign * (allInt8.quality - t.quality) }];
  });
}

// Where no sweep ran (it did not fit the budget), the Fisher proxy's int4 scores ordered the search instead.
function proxyRows() {
  return state.pareto.layers.filter((l) => l.proxy_score !== null && l.proxy_score !== undefined)
    .map((l) => ({ fqn: l.fqn, format: "int4", score: l.proxy_score }));
}

function sensitivityWaiting() {
  const job = state.job;
  const spec = job?.spec ?? {};
  if (spec.seed_with_sensitivity === false) {
    return "No sensitivity: this job ran without the one-layer sweep and the proxy (seed_with_sensitivity off).";
  }
  if (job && TERMINAL.has(job.status)) return `No sensitivity: the job ${job.status} before the sweep ran.`;
  return "Waiting for the sensitivity sweep (one layer in int4 at a time, after the uniform baselines) or, where "
    + "the sweep does not fit the budget, the Fisher proxy scores that order the search instead (shown when the "
    + "job ends).";
}

function renderSensitivity() {
  const order = state.pareto.layers.map((l) => l.fqn);
  const byOrder = (a, b) => order.indexOf(a.fqn) - order.indexOf(b.fqn);
  const sweep = sensitivityRows().sort(byOrder);
  const proxy = sweep.length ? [] : proxyRows().sort(byOrder);
  const source = sweep.length ? "sweep" : proxy.length ? "proxy" : "none";
  const chart = document.getElementById("sensitivity");
  chart.dataset.source = source;
  const table = document.getElementById("sensitivity-table");
  const metric = state.pareto.metric ?? "quality";
  document.getElementById("sensitivity-about").textContent = source === "proxy"
    ? "From the Fisher proxy, not a sweep: the one-layer QAT sweep did not fit the budget, so each layer's "
      + "empirical-Fisher score for int4 (loss units; higher = more sensitive) ordered the greedy path."
    : "From the sweep: all layers int8 except one in int4; the quality lost vs all-int8.";
  if (source === "proxy") {
    table.tHead.replaceChildren(el("tr", {}, ...["layer", "probe", "Fisher proxy score (int4, loss units)"]
      .map((h) => el("th", {}, h))));
    table.tBodies[0].replaceChildren(...proxy.map((r) => el("tr", { dataset: { fqn: r.fqn } },
      el("td", {}, r.fqn), el("td", {}, r.format), el("td", {}, r.score.toPrecision(4)))));
  } else {
    table.tHead.replaceChildren(el("tr", {}, ...["layer", "probe", "trial", "quality lost vs all-int8"]
      .map((h) => el("th", {}, h))));
    table.tBodies[0].replaceChildren(...sweep.map((r) => el("tr", { dataset: { fqn: r.fqn } },
      el("td", {}, r.fqn), el("td", {}, r.format), el("td", {}, `#${r.trial}`), el("td", {}, fmtQuality(r.lost)))));
  }
  if (source === "none") {
    table.tBodies[0].append(el("tr", {}, el("td", { colspan: 4, class: "muted", id: "sensitivity-empty" },
      sensitivityWaiting())));
  }
  const rows = source === "proxy" ? proxy : sweep;
  Plotly.react("sensitivity", [{
    type: "bar", name: source === "proxy" ? "Fisher proxy score" : `${metric} lost`,
    x: rows.map((r) => r.fqn), y: rows.map((r) => (source === "proxy" ? r.score : r.lost)),
    marker: { color: source === "proxy" ? "#f58518" : "#e45756" },
    hovertemplate: source === "proxy" ? "%{x}<br>Fisher score %{y:.4g}<extra></extra>"
      : "%{x}<br>lost %{y:.4f}<extra></extra>",
  }], {
    margin: { t: 10, r: 10, b: 100, l: 70 }, height: 300,
    xaxis: { tickangle: -35, title: { text: "layer in int4" } },
    yaxis: { title: { text: source === "proxy" ? "Fisher proxy score (loss units)" : `${metric} lost` } },
  }, PLOT_CONFIG);
}

// 2-D hypervolume of a front (maximize q, minimize c) against the reference point (qRef, cRef).
function hypervolume(front, qRef, cRef) {
  const pts = [...front].sort((a, b) => a.c - b.c || b.q - a.q);
  let area = 0;
  let qPrev = qRef;
  for (const p of pts) {
    if (p.q > qPrev) {
      area += (cRef - p.c) * (p.q - qPrev);
      qPrev = p.q;
    }
  }
  return area;
}

// Per trial in order: the best feasible quality so far, the running front's size and its hypervolume
// (on the first cost objective; as a share of the final one).  The front is kept incrementally.
function historySeries(trials, cost, sign) {
  const feasible = trials.filter((t) => t.feasible && t.quality !== null && t.quality !== undefined);
  const qRef = Math.min(...feasible.map((t) => sign * t.quality));
  const cRef = Math.max(...feasible.map((t) => t.costs[cost]));
  let front = [];
  let best = null;
  const out = { best: [], size: [], hv: [] };
  for (const t of trials) {
    if (t.feasible && t.quality !== null && t.quality !== undefined) {
      const p = { q: sign * t.quality, c: t.costs[cost] };
      best = best === null ? t.quality : (sign * t.quality > sign * best ? t.quality : best);
      const dominates = (a, b) => a.q >= b.q && a.c <= b.c && (a.q > b.q || a.c < b.c);
      if (!front.some((o) => dominates(o, p))) front = [...front.filter((o) => !dominates(p, o)), p];
    }
    out.best.push(best);
    out.size.push(front.length);
    out.hv.push(front.length ? hypervolume(front, qRef, cRef) : 0);
  }
  const last = out.hv[out.hv.length - 1] || 0;
  out.hvShare = out.hv.map((v) => (last > 0 ? v / last : 0));
  return out;
}

// Quality of each trial in order with the best so far, and the front's size and hypervolume after each.
function renderHistory() {
  const p = state.pareto;
  const trials = [...p.trials].sort((a, b) => a.number - b.number);
  const cost = p.cost_objectives[0];
  const sign = p.higher_is_better === false ? -1 : 1;
  const series = historySeries(trials, cost, sign);
  const numbers = trials.map((t) => t.number);
  const maxSize = Math.max(1, ...series.size);
  Plotly.react("history", [
    { type: "scatter", mode: "markers", name: "quality", x: numbers, y: trials.map((t) => t.quality),
      marker: { color: "#4c78a8" } },
    { type: "scatter", mode: "lines", name: "best so far", x: numbers, y: series.best,
      line: { color: "#54a24b", shape: "hv" } },
    { type: "scatter", mode: "lines", name: `front size (${cost})`, x: numbers, y: series.size,
      yaxis: "y2", line: { color: "#e45756", shape: "hv" } },
    { type: "scatter", mode: "lines", name: "hypervolume (share of final)", x: numbers, y: series.hvShare,
      yaxis: "y3", line: { color: "#b279a2", shape: "hv", dash: "dot" },
      customdata: series.hv, hovertemplate: "trial %{x}<br>hypervolume %{customdata:.4g} (%{y:.0%} of final)<extra></extra>" },
  ], {
    margin: { t: 10, r: 110, b: 50, l: 70 }, height: 320, legend: { orientation: "h", y: 1.16 },
    xaxis: { title: { text: "trial" }, domain: [0, 0.86] },
    yaxis: { title: { text: p.metric ?? "quality" } },
    // whole points only: a front has 1, 2, 3 points, never 1.5
    yaxis2: { title: { text: "front size" }, overlaying: "y", side: "right", anchor: "x", rangemode: "tozero",
      tickformat: "d", dtick: Math.max(1, Math.ceil(maxSize / 6)), range: [0, maxSize + 0.5] },
    yaxis3: { title: { text: "hypervolume" }, overlaying: "y", side: "right", anchor: "free", position: 0.97,
      range: [0, 1.05], tickvals: [0, 0.25, 0.5, 0.75, 1], tickformat: ".0%", showgrid: false },
  }, PLOT_CONFIG);
}

// ---- front points: downloads and compare ----

// file: the name of a per-trial download route ("qconfig.json")
function downloadButton(t, file, fallbackName) {
  return el("button", {
    class: "small", dataset: { download: t.number, file },
    onclick: () => download(`/v1/jobs/${jobId}/pareto/${t.number}/${file}`, fallbackName)
      .catch((exc) => showMessage(pageMessage, `${file}: ${exc.message}`)),
  }, file);
}

// the one file-name scheme of the CLI and the service: trial0003-<format summary>.<ext>
function trialFileName(t, ext) {
  return `trial${String(t.number).padStart(4, "0")}-${t.assignment_summary}${ext}`;
}

// qconfig.json always; model.onnx and weights once the job succeeded and the worker stored them
function frontDownloads(t, files) {
  const buttons = [downloadButton(t, "qconfig.json", trialFileName(t, ".json"))];
  if (files?.onnx) {
    const b = downloadButton(t, "model.onnx", trialFileName(t, ".onnx"));
    if (files.max_abs_diff_default !== null && files.max_abs_diff_default !== undefined) {
      b.title = `QDQ ONNX, checked in onnxruntime (default options): max |difference| ${files.max_abs_diff_default.toPrecision(3)}`;
    }
    buttons.push(b);
  }
  if (files?.weights) {
    const b = downloadButton(t, "weights", trialFileName(t, ".pt"));
    b.title = `trained weights (mixq checkpoint) ${files.fingerprint ?? ""}`;
    buttons.push(b);
  }
  if (files?.error) buttons.push(el("span", { class: "muted", title: files.error }, " (no ONNX: hover)"));
  return buttons;
}

function renderFront() {
  const p = state.pareto;
  const costs = p.cost_objectives;
  const front = [...p.points].sort((a, b) => a.costs[costs[0]] - b.costs[costs[0]]);
  const table = document.getElementById("front-table");
  table.tHead.replaceChildren(el("tr", {},
    ["trial", "quality", "± std", "runs", "drop vs fp32", ...costs, "formats", "download"].map((h) => el("th", {}, h))));
  // the same numbers as the qconfig file's quality report: mean, spread, runs, and the drop
  const dropOf = (t) => (p.fp32_quality === null || p.fp32_quality === undefined || t.quality === null ? null
    : (p.higher_is_better === false ? t.quality - p.fp32_quality : p.fp32_quality - t.quality));
  table.tBodies[0].replaceChildren(...front.map((t) => el("tr", { dataset: { trial: t.number } },
    el("td", {}, `#${t.number}`),
    el("td", {}, fmtQuality(t.quality)),
    el("td", {}, fmtQuality(t.quality_std)),
    el("td", {}, String(t.n_evaluations)),
    el("td", {}, fmtQuality(dropOf(t))),
    ...costs.map((name) => el("td", {}, fmtCost(t.costs[name]))),
    el("td", { title: layerLines(t.assignment).join("\n") }, t.assignment_summary),
    el("td", { class: "downloads" }, ...frontDownloads(t, (p.artefacts ?? {})[String(t.number)])),
  )));
  // compare: the front points first, then the other complete trials
  const onFront = new Set(front.map((t) => t.number));
  const choices = [...front, ...p.trials.filter((t) => !onFront.has(t.number))];
  const option = (t) => el("option", { value: t.number },
    `${onFront.has(t.number) ? "★ " : ""}#${t.number} · ${fmtQuality(t.quality)} · ${fmtCost(t.costs[costs[0]])}`);
  const [a, b] = [document.getElementById("compare-a"), document.getElementById("compare-b")];
  const chosen = [a.value, b.value];
  a.replaceChildren(...choices.map(option));
  b.replaceChildren(...choices.map(option));
  if (!choices.length) return;
  // defaults: the cheapest and the best front point (or another trial); a user's choice is kept
  const other = front.length > 1 ? front[front.length - 1] : choices[choices.length - 1];
  a.value = compareChosen && chosen[0] ? chosen[0] : choices[0].number;
  b.value = compareChosen && chosen[1] ? chosen[1] : other.number;
}

let compareChosen = false;
for (const id of ["compare-a", "compare-b"]) {
  document.getElementById(id).addEventListener("change", () => { compareChosen = true; });
}

document.getElementById("compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const a = document.getElementById("compare-a").value;
  const b = document.getElementById("compare-b").value;
  if (a && b) location.href = `/jobs/${encodeURIComponent(jobId)}/compare?a=${a}&b=${b}`;
});

// ---- loading and following ----

const pageMessage = document.getElementById("page-message");

async function loadPareto() {
  const note = document.getElementById("pareto-note");
  try {
    state.pareto = await api(`/v1/jobs/${jobId}/pareto`);
  } catch (exc) {
    // before the first trial finishes there may be no front yet: say so instead of failing
    note.textContent = `No front yet: ${waitingFor()} (${exc.message}).`;
    return;
  }
  const objectives = state.pareto.cost_objectives;
  if (costAxis.options.length !== objectives.length) {
    costAxis.replaceChildren(...objectives.map((o) => el("option", { value: o }, o)));
  }
  document.getElementById("cost-axis-label").hidden = objectives.length < 2;
  if (!state.pareto.trials.length) {
    const waiting = waitingFor();
    note.textContent = `No front yet: ${waiting}.`;
    setEmpty("heatmap-empty", `Each front point's precision per layer: ${waiting}.`);
    setEmpty("history-empty", `Each trial's quality, the best so far, the front's size and hypervolume: ${waiting}.`);
    setEmpty("front-empty", `The front points with their qconfig, ONNX and weights downloads: ${waiting}.`);
    document.getElementById("sensitivity").dataset.source = "none";
    setEmpty("sensitivity-waiting", sensitivityWaiting());
    return;
  }
  note.textContent = "";
  for (const id of ["heatmap-empty", "history-empty", "front-empty", "sensitivity-waiting"]) setEmpty(id, "");
  renderPareto();
  renderHeatmap();
  renderSensitivity();
  renderHistory();
  renderFront();
  renderTrials();  // on_front may have changed
}

let paretoTimer = null;
function scheduleParetoRefresh() {
  clearTimeout(paretoTimer);
  paretoTimer = setTimeout(() => loadPareto().catch(() => {}), PARETO_DEBOUNCE_MS);
}

async function loadAll() {
  // the profiles' default formats, for the formats row (advisory: the page works without)
  if (!state.meta) state.meta = await api("/v1/meta").catch(() => null);
  renderJob(await api(`/v1/jobs/${jobId}`));
  await Promise.all([loadTrials(), loadPareto()]);
}

// for the browser tests: the job page has everything of a finished job, and how it learnt the end
function markDone(via) {
  document.body.dataset.jobDone = "true";
  document.body.dataset.doneVia = via;
}

function setLive(text) {
  document.getElementById("live").textContent = text;
}

// Follow the job over SSE; if the stream cannot be opened (or is refused), poll instead.
function follow() {
  const events = eventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  setLive("● live");
  events.addEventListener("progress", (e) => renderJob(JSON.parse(e.data)));
  events.addEventListener("trial", (e) => {
    const trial = JSON.parse(e.data);
    state.trials.set(trial.number, trial);
    renderTrials();
    scheduleParetoRefresh();
  });
  events.addEventListener("done", async (e) => {
    events.close();
    setLive("");
    const job = JSON.parse(e.data);
    if (job.status === "deleted") {
      showMessage(pageMessage, `job ${jobId} was deleted`);
      return;
    }
    renderJob(job);
    await loadAll();
    markDone("events");
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      setLive("(stream closed; polling)");
      poll();
    }
  };
}

async function poll() {
  const before = state.job?.progress?.finished;
  try {
    const job = await api(`/v1/jobs/${jobId}`);
    renderJob(job);
    if (job.progress?.finished !== before || TERMINAL.has(job.status)) await loadAll();
    if (TERMINAL.has(job.status)) {
      setLive("");
      markDone("polling");
      return;
    }
  } catch (exc) {
    showMessage(pageMessage, `could not load the job: ${exc.message}`);
  }
  setTimeout(poll, POLL_MS);
}

costAxis.addEventListener("change", () => { renderPareto(); renderHeatmap(); });

async function start() {
  showMessage(pageMessage, "");
  try {
    await loadAll();
  } catch (exc) {
    showMessage(pageMessage, `could not load job ${jobId}: ${exc.message}`);
    return;
  }
  if (TERMINAL.has(state.job.status)) markDone("load");
  else follow();
}

initTokenBar(start);
start();
