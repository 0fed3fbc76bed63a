// Jobs page: the jobs list (polled) and the submit form.  The form does no validation of its own
// beyond reading numbers, JSON, pin lines and rung lists: it sends the values and places the API's 422 messages next to
// the field each one names (detail[].loc), so the page says exactly what the API says.
import {
  ApiError, TERMINAL, api, el, fmtCost, fmtQuality, fmtTime, initTokenBar, postJson, progressBar, showMessage,
  statusBadge,
} from "/static/common.js";

const POLL_MS = 2000;
const NUMBER_FIELDS = [
  "n_trials", "timeout_s", "qat_steps", "max_quality_drop", "seed", "priority", "promotion_eta", "budget_qat_steps",
];
const TEXT_FIELDS = ["workload", "profile", "sampler", "model", "dataset"];

// a line under each field: what it means, the units, the formats' names
// Each field's hint is the request model's description (GET /v1/meta "help"): one text for the API's
// schema, the CLI's --help and this page.

const form = document.getElementById("job-form");
const tbody = document.querySelector("#jobs-table tbody");
const statusFilter = document.getElementById("status-filter");
let idempotencyKey = newKey();

// ---- meta: fill the selects and defaults (the API's request model; the page keeps no copy) ----

const nameOf = (item) => (typeof item === "string" ? item : item.name);

function fillSelect(select, items, selected, extra = []) {
  select.replaceChildren(
    ...extra.map(([value, label]) => el("option", { value }, label)),
    ...items.map((item) => el("option", { value: nameOf(item) }, nameOf(item))),
  );
  select.value = selected ?? "";
}

function fillChecks(container, name, items, checked) {
  container.replaceChildren(
    ...items.map((item) => {
      const value = nameOf(item);
      return el("label", { class: "check" },
        el("input", { type: "checkbox", name, value, checked: checked.includes(value) }), ` ${value}`);
    }),
  );
}

// Hints and error slots are tied to their inputs (aria-describedby), so a screen reader reads both.
function describeFields(hints) {
  for (const wrapper of form.querySelectorAll("[data-field]")) {
    const name = wrapper.dataset.field;
    const slot = wrapper.querySelector(`[data-error-for="${name}"]`);
    slot.id = `error-${name}`;
    const ids = [slot.id];
    if (hints[name]) {  // a second call (a new token) updates the hints in place
      const hint = document.getElementById(`hint-${name}`) ?? el("div", { class: "hint", id: `hint-${name}` });
      hint.textContent = hints[name];
      if (!hint.isConnected) slot.before(hint);
      ids.unshift(hint.id);
    }
    // a fieldset of checkboxes is described as a group
    const target = wrapper.tagName === "FIELDSET" ? wrapper : wrapper.querySelector("input, select, textarea");
    target?.setAttribute("aria-describedby", ids.join(" "));
  }
}

async function loadMeta() {
  const meta = await api("/v1/meta");
  describeFields(meta.help);
  const defaults = meta.defaults;
  document.getElementById("workload-list").replaceChildren(
    ...meta.workloads.map((w) => el("option", { value: nameOf(w) })),
  );
  if (!form.workload.value && meta.workloads.length) form.workload.value = nameOf(meta.workloads[0]);
  fillSelect(form.profile, meta.profiles, defaults.profile);
  profileFormats = meta.profile_formats ?? {};
  showProfileFormats();
  fillSelect(form.sampler, meta.samplers, defaults.sampler);
  fillSelect(form.pin_first_last, meta.formats, defaults.pin_first_last ?? "", [["", "free (not pinned)"]]);
  fillChecks(document.getElementById("f-formats"), "formats", meta.formats, defaults.formats);
  fillChecks(document.getElementById("f-cost_objectives"), "cost_objectives", meta.cost_objectives,
    defaults.cost_objectives);
  for (const name of ["n_trials", "qat_steps", "seed", "priority", "promotion_eta", "budget_qat_steps"]) {
    form[name].value = defaults[name] ?? "";
  }
  form.fidelity_rungs.value = (defaults.fidelity_rungs ?? []).join(",");
}

// what no format checked means: the chosen profile's formats (fp32 aside), as the search resolves them
let profileFormats = {};
function showProfileFormats() {
  const formats = profileFormats[form.profile.value];
  document.getElementById("formats-none").textContent = formats
    ? `None checked: the profile's formats (${formats.join(", ")}).`
    : "None checked: the profile's formats.";
}
form.profile.addEventListener("change", showProfileFormats);

// ---- the form ----

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

// The JobCreate body, or throws a list of errors shaped like the API's 422 detail.
function readForm() {
  const body = {};
  const errors = [];
  for (const name of TEXT_FIELDS) {
    const value = form[name].value.trim();
    if (value) body[name] = value;
  }
  if (!body.workload) body.workload = "";  // let the API name the missing field
  for (const name of NUMBER_FIELDS) {
    const input = form[name];
    // "1e" in a number input reads as "" (badInput): an error, never the default
    if (input.validity.badInput) {
      errors.push({ loc: ["body", name], msg: "not a number" });
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    const value = Number(raw);
    if (!Number.isFinite(value)) errors.push({ loc: ["body", name], msg: `not a finite number: ${raw}` });
    else body[name] = value;
  }
  body.formats = [...form.querySelectorAll("input[name=formats]:checked")].map((c) => c.value);
  body.cost_objectives = [...form.querySelectorAll("input[name=cost_objectives]:checked")].map((c) => c.value);
  body.pin_first_last = form.pin_first_last.value || null;

  const options = form.workload_options.value.trim();
  if (options) {
    try {
      body.workload_options = JSON.parse(options);
    } catch (exc) {
      errors.push({ loc: ["body", "workload_options"], msg: `not valid JSON: ${exc.message}` });
    }
  }
  // "1,3,9": whole numbers only; their order and bounds are the API's to check
  const rungs = form.fidelity_rungs.value.trim();
  if (rungs) {
    const parts = rungs.split(",").map((part) => part.trim());
    const bad = parts.find((part) => !/^[+-]?\d+$/.test(part));
    if (bad !== undefined) {
      errors.push({ loc: ["body", "fidelity_rungs"], msg: `not a whole number: "${bad}" (write the rungs as 1,3,9)` });
    } else {
      body.fidelity_rungs = parts.map(Number);
    }
  }
  const pins = [];
  form.pins.value.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    const [match, format] = line.split("=").map((s) => s.trim());
    if (!match || format === undefined) {
      errors.push({ loc: ["body", "pins", i], msg: "write one pin per line as: match = format" });
      return;
    }
    pins.push({ match, format: format === "free" || format === "" ? null : format });
  });
  if (pins.length) body.pins = pins;
  if (errors.length) throw new ApiError(422, errors);
  return body;
}

function clearErrors() {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const field of form.querySelectorAll(".field.invalid")) field.classList.remove("invalid");
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// Which form field an error belongs to: detail.loc (["body", "n_trials"]), else a "field: ..."
// prefix in the message (model-level validators), else the whole form.
function placeOf(error) {
  // ["body", "pins", 0, "format"]; a dotted part ("pins.0.format") is split the same way
  const loc = (error.loc || [])
    .filter((part) => part !== "body")
    .flatMap((part) => (typeof part === "string" ? part.split(".") : [part]))
    .map((part) => (typeof part === "string" && /^\d+$/.test(part) ? Number(part) : part));
  if (typeof loc[0] === "string" && form.querySelector(`[data-error-for="${loc[0]}"]`)) {
    return { field: loc[0], rest: loc.slice(1) };
  }
  const named = /^(?:Value error, )?([a-z_]+):/.exec(error.msg || "");
  if (named && form.querySelector(`[data-error-for="${named[1]}"]`)) return { field: named[1], rest: [] };
  return { field: "_form", rest: loc };
}

function showErrors(detail) {
  clearErrors();
  if (typeof detail === "string") detail = [{ loc: [], msg: detail }];
  let first = null;
  for (const error of detail) {
    const { field, rest } = placeOf(error);
    let where = rest.join(".");
    if (field === "pins" && typeof rest[0] === "number") where = `pin ${rest[0] + 1}${rest[1] ? ` (${rest[1]})` : ""}`;
    const slot = form.querySelector(`[data-error-for="${field}"]`);
    slot.append(el("div", {}, where ? `${where}: ${error.msg}` : error.msg));
    const wrapper = form.querySelector(`[data-field="${field}"]`);
    if (wrapper) {
      wrapper.classList.add("invalid");
      const input = wrapper.querySelector("input, select, textarea");
      input?.setAttribute("aria-invalid", "true");
      first ??= input;
    }
  }
  first?.focus();
}

form.addEventListener("input", () => { idempotencyKey = newKey(); });

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = document.getElementById("submit-result");
  const button = document.getElementById("submit-job");
  showMessage(result, "");
  button.disabled = true;
  try {
    const job = await postJson("/v1/jobs", readForm(), { "Idempotency-Key": idempotencyKey });
    clearErrors();
    idempotencyKey = newKey();
    result.replaceChildren(el("div", { class: "message ok" }, "Submitted ",
      el("a", { href: `/jobs/${job.id}`, id: "submitted-job" }, `job ${job.id}`)));
    refreshJobs();
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 422) showErrors(exc.detail);
    else showErrors(exc instanceof ApiError ? exc.detail : String(exc));
  } finally {
    button.disabled = false;
  }
});

// ---- the jobs list ----

// "3 points on the front" and "cheapest within drop 0.05: #7 0.9412 at 1.2e6 bitops": what a user picks from
function frontCell(job) {
  const f = job.front;
  const size = f?.size
    ? `${f.size} point${f.size === 1 ? "" : "s"} on the front${f.final ? "" : " so far"}`
    : "no front yet";
  const limit = job.spec?.max_quality_drop;
  const within = limit === null || limit === undefined ? "cheapest (no drop limit)" : `cheapest within drop ${limit}`;
  const c = f?.cheapest;
  const cheapest = c
    ? `${within}: #${c.trial_number} · ${fmtQuality(c.quality)} at ${fmtCost(c.cost)} ${c.cost_objective}`
    : (f?.size || job.counts?.complete ? `${within}: none` : "");
  return [el("div", { class: "front-size" }, size), cheapest ? el("div", { class: "hint cheapest" }, cheapest) : ""];
}

function jobRow(job) {
  const cancel = TERMINAL.has(job.status) ? "" : el("button", {
    class: "small",
    onclick: async () => {
      await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      refreshJobs();
    },
  }, "cancel");
  const front = frontCell(job);
  return el("tr", { dataset: { jobId: job.id, status: job.status } },
    el("td", {}, el("a", { href: `/jobs/${job.id}` }, String(job.id).slice(0, 12))),
    el("td", {}, job.spec?.workload ?? "–"),
    el("td", {}, statusBadge(job.status),
      job.status === "failed" && job.error
        ? el("div", { class: "job-error", title: job.error }, job.error.length > 160 ? `${job.error.slice(0, 160)}…` : job.error)
        : null),
    el("td", {}, progressBar(job.progress),
      job.counts?.failed ? el("div", { class: "hint failed-count" },
        `${job.counts.failed} failed (${job.counts.retried} retried)`) : null),
    el("td", { class: "front-summary", title: job.metric ?? "" }, ...front),
    el("td", {}, fmtTime(job.created_at)),
    el("td", {}, cancel),
  );
}

let refreshing = false;
async function refreshJobs() {
  if (refreshing) return;
  refreshing = true;
  const message = document.getElementById("jobs-message");
  try {
    const query = new URLSearchParams({ limit: "50" });
    if (statusFilter.value) query.set("status", statusFilter.value);
    const page = await api(`/v1/jobs?${query}`);
    tbody.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no jobs yet")));
    document.getElementById("jobs-total").textContent =
      page.total > page.items.length ? `showing ${page.items.length} of ${page.total}` : "";
    showMessage(message, "");
  } catch (exc) {
    showMessage(message, `could not load jobs: ${exc.message}`);
  } finally {
    refreshing = false;
  }
}

async function start() {
  try {
    await loadMeta();
  } catch (exc) {
    showErrors(`could not load /v1/meta: ${exc.message}`);
  }
  refreshJobs();
}

statusFilter.addEventListener("change", refreshJobs);
initTokenBar(start);
setInterval(() => { if (!document.hidden) refreshJobs(); }, POLL_MS);
start();
