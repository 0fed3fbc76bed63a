// Shared by every dashboard page: the API client (Bearer token from localStorage), the token bar,
// tiny DOM helpers and number formatting.  Plain ES module, no build step.

const TOKEN_KEY = "mixq.token";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

// An API answer that was not 2xx.  `detail` is FastAPI's: a string or a list of {loc, msg, type}.
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// fetch() plus auth; returns the raw Response (2xx) or throws ApiError.
export async function apiFetch(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch (_) {
      // not JSON: keep the status line
    }
    if (response.status === 401) showAuthBanner();
    throw new ApiError(response.status, detail);
  }
  return response;
}

export async function api(path, options = {}) {
  const response = await apiFetch(path, options);
  return response.status === 204 ? null : response.json();
}

export function postJson(path, body, extraHeaders = {}) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...extraHeaders },
    body: JSON.stringify(body),
  });
}

// EventSource cannot send headers, so the token travels as ?token= (see docs/api-contract.md).
export function eventSource(path) {
  const token = getToken();
  const url = token ? `${path}?token=${encodeURIComponent(token)}` : path;
  return new EventSource(url);
}

// Download an attachment through fetch (so the Bearer header is sent) and save it under the
// server's filename.
export async function download(path, fallbackName) {
  const response = await apiFetch(path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(await response.blob());
  const a = el("a", { href: url, download: match ? match[1] : fallbackName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// el("td", {class: "x", onclick: f}, "text", child) -> HTMLElement
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export function fmtQuality(value, digits = 4) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// 1234567 -> "1.23 M"; costs span many orders of magnitude (bitops vs latency_ms).
export function fmtCost(value) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [scale, suffix] of units) if (abs >= scale) return `${(value / scale).toPrecision(3)} ${suffix}`;
  return abs >= 1 || abs === 0 ? value.toPrecision(3) : value.toExponential(2);
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

// 42 -> "42s", 185 -> "3m05s", 3720 -> "1h02m" (as the CLI's progress line)
export function fmtDuration(seconds) {
  const whole = Math.max(Math.round(seconds), 0);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")}m`;
}

// "sampling · 8/8" while trials run, "reevaluating · 8/8" after them: the bar alone stops at 8/8
export function progressBar(progress) {
  const fraction = progress ? progress.fraction : 0;
  const phase = progress?.phase && progress.phase !== "done" ? `${progress.phase} · ` : "";
  const label = progress ? `${phase}${progress.finished}/${progress.total}` : "–";
  return el(
    "div",
    { class: "progress", title: `${Math.round(fraction * 100)} %` },
    el("div", { class: "progress-fill", style: `width: ${Math.min(100, fraction * 100)}%` }),
    el("span", { class: "progress-label" }, label),
  );
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// Weight bits of a format name: int4 -> 4, w4a8 -> 4, int8 -> 8, fp16 -> 16 (null if unknown).
export function weightBits(name) {
  const match = /^(?:int|fp|w)(\d+)/.exec(name || "");
  return match ? Number(match[1]) : null;
}

// Formats from cheapest to dearest; the heat map's colour order.  Unknown names sort last.
const FORMAT_ORDER = ["int4", "w4a8", "int8", "w8a16", "fp16", "fp32"];
export function formatRank(name) {
  const i = FORMAT_ORDER.indexOf(name);
  return i === -1 ? FORMAT_ORDER.length : i;
}

export function showMessage(container, text, kind = "error") {
  container.replaceChildren(text ? el("div", { class: `message ${kind}` }, text) : "");
}

function showAuthBanner() {
  const banner = document.getElementById("auth-banner");
  if (banner) banner.hidden = false;
}

// The header's token field: saved in localStorage, sent as a Bearer token with every request.
export function initTokenBar(onChange) {
  const input = document.getElementById("token");
  const form = document.getElementById("token-form");
  if (!input || !form) return;
  input.value = getToken();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    document.getElementById("auth-banner").hidden = true;
    if (onChange) onChange();
  });
}
