// Compare page: two points of a job side by side (?a=<trial>&b=<trial>): totals, and each layer's
// format in both with the layers that differ highlighted.  Per-layer costs are shown when the
// Pareto answer carries layers[].costs_by_format ({format: {objective: value}}).
import { api, el, fmtCost, fmtQuality, initTokenBar, showMessage } from "/static/common.js";

const jobId = decodeURIComponent(location.pathname.split("/")[2]);
const pickA = document.getElementById("pick-a");
const pickB = document.getElementById("pick-b");
const onlyDiff = document.getElementById("only-diff");
let pareto = null;

document.getElementById("job-link").href = `/jobs/${encodeURIComponent(jobId)}`;
document.getElementById("job-link").textContent = `job ${jobId}`;

function trialByNumber(number) {
  return pareto.trials.find((t) => t.number === number) || pareto.points.find((t) => t.number === number);
}

function signed(value, format) {
  return `${value > 0 ? "+" : ""}${format(value)}`;
}

function renderTotals(a, b) {
  const table = document.getElementById("totals");
  table.tHead.replaceChildren(el("tr", {}, el("th", {}, ""), el("th", {}, `A: trial #${a.number}`),
    el("th", {}, `B: trial #${b.number}`), el("th", {}, "B − A")));
  const rows = [
    [`${pareto.metric ?? "quality"}`, fmtQuality(a.quality), fmtQuality(b.quality),
      signed(b.quality - a.quality, (v) => fmtQuality(v))],
    ["± std (runs)", `${fmtQuality(a.quality_std)} (${a.n_evaluations})`, `${fmtQuality(b.quality_std)} (${b.n_evaluations})`, ""],
    ...pareto.cost_objectives.map((name) => {
      const [ca, cb] = [a.costs[name], b.costs[name]];
      const ratio = ca ? ` (×${(cb / ca).toFixed(2)})` : "";
      return [name, fmtCost(ca), fmtCost(cb), `${signed(cb - ca, fmtCost)}${ratio}`];
    }),
    ["feasible", a.feasible ? "yes" : "no", b.feasible ? "yes" : "no", ""],
    ["on the front", a.on_front ? "yes" : "no", b.on_front ? "yes" : "no", ""],
    ["formats", a.assignment_summary, b.assignment_summary, ""],
  ];
  table.tBodies[0].replaceChildren(...rows.map(([k, ...cells]) => el("tr", {},
    el("th", {}, k), ...cells.map((c) => el("td", {}, c)))));
}

function renderLayers(a, b) {
  const layers = [...pareto.layers].sort((x, y) => x.index - y.index);
  const objective = pareto.cost_objectives[0];
  const withCosts = layers.some((l) => l.costs_by_format);
  const layerCost = (l, fmt) => fmtCost(l.costs_by_format?.[fmt]?.[objective]);
  const table = document.getElementById("layers");
  table.tHead.replaceChildren(el("tr", {}, ...["#", "layer", "kind", "pinned", "A", "B",
    ...(withCosts ? [`A ${objective}`, `B ${objective}`] : [])].map((h) => el("th", {}, h))));
  let differing = 0;
  const rows = layers.map((l) => {
    const [fa, fb] = [a.assignment[l.fqn], b.assignment[l.fqn]];
    const differs = fa !== fb;
    if (differs) differing += 1;
    return el("tr", { class: differs ? "differs" : "", hidden: onlyDiff.checked && !differs,
      dataset: { fqn: l.fqn, differs: String(differs) } },
      el("td", {}, String(l.index)),
      el("td", {}, l.fqn),
      el("td", {}, l.kind ?? "–"),
      el("td", {}, l.pinned ? l.pin_reason || "yes" : ""),
      el("td", { class: `fmt fmt-${fa}` }, fa ?? "–"),
      el("td", { class: `fmt fmt-${fb}` }, fb ?? "–"),
      ...(withCosts ? [el("td", {}, layerCost(l, fa)), el("td", {}, layerCost(l, fb))] : []),
    );
  });
  // compute that stays float (attention matmuls, embeddings): the same in A and B, in both costs at float
  const columns = 6 + (withCosts ? 2 : 0);
  const floats = (pareto.float_layers || []).map((f) => el("tr", { class: "muted float-layer",
    hidden: onlyDiff.checked, dataset: { fqn: f.fqn, differs: "false" } },
    el("td", {}, "–"),
    el("td", {}, f.fqn || "(the model's own forward)"),
    el("td", {}, f.kind),
    el("td", { colspan: String(columns - 3) }, `stays float: ${f.reason} (${fmtCost(f.macs)} MACs)`),
  ));
  table.tBodies[0].replaceChildren(...rows, ...floats);
  document.getElementById("diff-count").textContent = `(${differing} of ${layers.length} differ)`;
  document.getElementById("layer-cost-note").hidden = withCosts;
}

function render() {
  const a = trialByNumber(Number(pickA.value));
  const b = trialByNumber(Number(pickB.value));
  if (!a || !b) return;
  history.replaceState(null, "", `?a=${a.number}&b=${b.number}`);
  renderTotals(a, b);
  renderLayers(a, b);
}

async function start() {
  const message = document.getElementById("page-message");
  try {
    pareto = await api(`/v1/jobs/${encodeURIComponent(jobId)}/pareto`);
  } catch (exc) {
    showMessage(message, `could not load the front of job ${jobId}: ${exc.message}`);
    return;
  }
  showMessage(message, "");
  // front points first, then the other complete trials
  const front = new Set(pareto.points.map((t) => t.number));
  const choices = [...pareto.points, ...pareto.trials.filter((t) => !front.has(t.number))];
  const option = (t) => el("option", { value: t.number },
    `${front.has(t.number) ? "★ " : ""}#${t.number} · ${fmtQuality(t.quality)} · ${fmtCost(t.costs[pareto.cost_objectives[0]])}`);
  pickA.replaceChildren(...choices.map(option));
  pickB.replaceChildren(...choices.map(option));
  const query = new URLSearchParams(location.search);
  const asked = [["a", query.get("a") ?? choices[0]?.number], ["b", query.get("b") ?? choices[1]?.number ?? choices[0]?.number]];
  // a trial number that is not among the complete trials is an error, not silently trial #0
  const missing = asked.filter(([, value]) => !trialByNumber(Number(value)) || !/^\d+$/.test(String(value)));
  if (missing.length) {
    const known = choices.map((t) => t.number).join(", ") || "none yet";
    showMessage(message, missing.map(([key, value]) => `${key}: no complete trial #${value} in job ${jobId}`)
      .join("; ") + ` (complete trials: ${known})`);
    return;
  }
  pickA.value = asked[0][1];
  pickB.value = asked[1][1];
  render();
}

pickA.addEventListener("change", render);
pickB.addEventListener("change", render);
onlyDiff.addEventListener("change", render);
initTokenBar(start);
start();
