// Sluice dashboard: get a session (control plane or a session token), list
// the edge's datasets, run a query or open a live feed, and render the
// Arrow record batches into a table and a chart as each one arrives.
// Every close code the gateway documents becomes a sentence for the user.

import { RecordBatchReader, DataType } from "apache-arrow";
import {
  Chart, Colors, LineController, LineElement, PointElement, LinearScale, CategoryScale, Legend, Tooltip,
} from "chart.js";

Chart.register(Colors, LineController, LineElement, PointElement, LinearScale, CategoryScale, Legend, Tooltip);

const $ = (id) => document.getElementById(id);
const MAX_TABLE_ROWS = 200;
/** Points the chart holds; past it, every other point is dropped and the
 *  stride doubles, so the chart always spans the whole answer. */
const MAX_QUERY_POINTS = 5000;
const LIVE_WINDOW = 300;
const MAX_CHART_SERIES = 8;
/** One colour per series, shown beside its column's checkbox. */
const PALETTE = ["#1d4ed8", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];
/** A live view that shows nothing for this long says why it may be empty. */
const LIVE_QUIET_MS = 4000;

/** What each close code means to a person (README, "Browser ↔ gateway"). */
export const CLOSE_MESSAGES = {
  1000: "The session ended.",
  1001: "The gateway is restarting or shutting down; connect again in a moment.",
  1006: "The connection to the gateway was lost.",
  1008: "The gateway refused a message from this page.",
  1009: "A message was larger than the gateway accepts.",
  4400: "The gateway could not understand a request from this page.",
  4401: "Your session token is invalid or has expired. Get a new session.",
  4403: "This session is not allowed to read that dataset.",
  4404: "That dataset or edge does not exist.",
  4408: "The session did not authenticate in time.",
  4409: "This view fell too far behind the live feed and was dropped. Reopen it.",
  4410: "This session was revoked by an administrator. Ask for access again.",
  4413: "The answer is larger than the gateway will buffer.",
  4429: "This session has used its byte quota.",
  4503: "The site's connector is offline; the data cannot be reached right now.",
};

export function closeMessage(code, reason) {
  const known = CLOSE_MESSAGES[code];
  if (known) return known;
  return `The gateway closed the session (${code}${reason ? `: ${reason}` : ""}).`;
}

/** Async queue of byte chunks: binary messages in, an IPC stream out. */
class ChunkQueue {
  constructor() { this.items = []; this.waiters = []; this.done = false; }
  push(chunk) {
    const w = this.waiters.shift();
    if (w) w({ value: chunk, done: false }); else this.items.push(chunk);
  }
  end() {
    this.done = true;
    for (const w of this.waiters.splice(0)) w({ value: undefined, done: true });
  }
  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this.items.length) return Promise.resolve({ value: this.items.shift(), done: false });
        if (this.done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((r) => this.waiters.push(r));
      },
      return: () => { this.end(); return Promise.resolve({ value: undefined, done: true }); },
    };
  }
}

function jwtClaims(token) {
  try {
    const b = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b + "===".slice((b.length + 3) % 4)));
  } catch { return {}; }
}

function fmtBytes(n) {
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fmtRate(bytesPerSec) {
  return `${fmtBytes(bytesPerSec)}/s`;
}

const toMs = (v) => (typeof v === "bigint" ? Number(v) : v instanceof Date ? v.getTime() : Number(v));

/** A time as much of it as the span needs: the date for days and more,
 *  the time of day for less. */
function fmtTime(ms, spanMs) {
  const iso = new Date(ms).toISOString();
  if (spanMs >= 2 * 86400e3) return iso.slice(0, 10);
  if (spanMs >= 86400e3) return `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
  if (spanMs >= 60e3) return iso.slice(11, 19);
  return iso.slice(11, 23);
}

/** Fraction digits a float column is shown with: what its first values
 *  need, at most 4, the same for every row. */
function decimalsOf(col, n) {
  let d = 0;
  for (let r = 0; r < Math.min(n, 200); r++) {
    const v = col.get(r);
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    const frac = String(Number(v.toPrecision(12))).split(".")[1];
    d = Math.max(d, frac ? frac.length : 0);
  }
  return Math.min(d, 4);
}

function cell(v, type, decimals) {
  if (v === null || v === undefined) return "";
  if (type && timeType(type)) {
    return new Date(toMs(v)).toISOString().replace("T", " ").replace("Z", "");
  }
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (typeof v === "number") {
    if (decimals !== undefined && DataType.isFloat(type)) return v.toFixed(decimals);
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(10)));
  }
  if (typeof v === "object" && v.toJSON) return JSON.stringify(v.toJSON());
  return String(v);
}

/** Columns that make poor chart series: ids and counters set the scale
 *  and flatten everything else. */
const idLike = (name) => /(^|_)(id|key|seq|index|idx|row)$/i.test(name) || /^id_/i.test(name);

const numericType = (t) => DataType.isInt(t) || DataType.isFloat(t) || DataType.isDecimal(t);
const timeType = (t) => DataType.isTimestamp(t) || DataType.isDate(t);

/** Timeline the browser tests read: when batches rendered, when streams ended. */
window.__sluice = { batches: [], ends: [], binaries: [], chart: () => state.chart };

const state = {
  ws: null, token: "", quota: 0, bytes: 0, rows: 0, t0: 0,
  stream: null, chart: null, live: false, release: null, lastRateAt: 0,
  stride: 1, seen: 0, decimals: [], quietTimer: null, lastError: "",
};

function show(text, kind = "error") {
  const m = $("message");
  m.textContent = text;
  m.className = kind === "info" ? "info" : "";
  m.hidden = !text;
}

function setState(text) { $("st-state").textContent = text; }

function updateStatus() {
  $("st-bytes").textContent = fmtBytes(state.bytes);
  $("st-rows").textContent = `${state.rows.toLocaleString()} rows`;
  const secs = state.t0 ? (performance.now() - state.t0) / 1000 : 0;
  // A rate over a few milliseconds says nothing: wait for half a second.
  $("st-rate").textContent = secs >= 0.5
    ? `${fmtRate(state.bytes / secs)} · ${Math.round(state.rows / secs).toLocaleString()} rows/s`
    : "– rows/s";
  const chart = state.chart;
  const points = chart ? chart.data.labels.length : 0;
  $("chart-note").textContent = !chart || !chart.data.datasets.length
    ? (state.rows ? "no numeric column to chart" : "")
    : state.live
      ? `chart: the last ${points.toLocaleString()} rows`
      : state.stride > 1
        ? `chart: every ${state.stride}th row (${points.toLocaleString()} of ${state.rows.toLocaleString()} rows)`
        : `chart: all ${points.toLocaleString()} rows`;
  $("st-quota").textContent = state.quota
    ? `quota left: ${fmtBytes(Math.max(0, state.quota - state.bytes))}`
    : "quota: unlimited";
}

function resetView(schemaFields) {
  const thead = $("rows").querySelector("thead");
  const tbody = $("rows").querySelector("tbody");
  thead.innerHTML = "";
  tbody.innerHTML = "";
  if (state.chart) { state.chart.destroy(); state.chart = null; }
  if (!schemaFields) return;
  const tr = document.createElement("tr");
  for (const f of schemaFields) {
    const th = document.createElement("th");
    th.textContent = f.name;
    tr.appendChild(th);
  }
  thead.appendChild(tr);
  const xCol = schemaFields.findIndex((f) => timeType(f.type));
  const ys = schemaFields.map((f, i) => [f, i]).filter(([f, i]) => numericType(f.type) && i !== xCol).slice(0, MAX_CHART_SERIES);
  const label = (v) => {
    const labels = state.chart ? state.chart.data.labels : [];
    if (xCol < 0 || !labels.length) return typeof v === "number" ? v.toLocaleString() : String(v);
    return fmtTime(v, labels[labels.length - 1] - labels[0]);
  };
  state.chart = new Chart($("chart"), {
    type: "line",
    data: { labels: [], datasets: ys.map(([f, i], k) => ({ label: f.name, data: [], col: i, pointRadius: 0, borderWidth: 1.5, borderColor: PALETTE[k], backgroundColor: PALETTE[k] })) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: { legend: { display: false }, tooltip: { callbacks: { title: (items) => items.length ? label(items[0].chart.data.labels[items[0].dataIndex]) : "" } } },
      scales: {
        x: { ticks: { maxTicksLimit: 8, callback(value) { return label(this.getLabelForValue(value)); } } },
        y: { ticks: { callback: (v) => Number(v).toLocaleString(undefined, { maximumFractionDigits: 3 }) } },
      },
    },
  });
  state.chart.$xCol = xCol;
  state.chart.$picked = false;
  state.stride = 1; state.seen = 0;
  const picker = $("columns");
  picker.innerHTML = "";
  ys.forEach(([f], k) => {
    const l = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.value = f.name; box.dataset.series = String(k);
    box.addEventListener("change", () => {
      state.chart.setDatasetVisibility(k, box.checked);
      state.chart.update("none");
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[k];
    l.append(box, swatch, f.name);
    picker.appendChild(l);
  });
}

/** Default series, once the first rows are in: not id-like columns, not
 *  columns that hold one value. The user's ticks win afterwards. */
function pickSeries(cols, n) {
  const chart = state.chart;
  if (!chart || chart.$picked || n === 0) return;
  chart.$picked = true;
  const boxes = [...$("columns").querySelectorAll("input")];
  const keep = chart.data.datasets.map((ds) => {
    const c = cols[ds.col];
    let first = null, varies = false;
    for (let r = 0; r < Math.min(n, 1000) && !varies; r++) {
      const v = c.get(r);
      if (v === null) continue;
      if (first === null) first = Number(v); else if (Number(v) !== first) varies = true;
    }
    return varies && !idLike(ds.label);
  });
  // Nothing left (every column an id or constant): show them all.
  const all = !keep.some(Boolean);
  keep.forEach((k, i) => {
    chart.setDatasetVisibility(i, all || k);
    boxes[i].checked = all || k;
  });
}

function addBatch(batch) {
  const fields = batch.schema.fields;
  const cols = fields.map((_, i) => batch.getChildAt(i));
  const tbody = $("rows").querySelector("tbody");
  const n = batch.numRows;
  if (!state.decimals.length && n) state.decimals = cols.map((c) => decimalsOf(c, n));
  const row = (r) => {
    const tr = document.createElement("tr");
    cols.forEach((c, i) => { const td = document.createElement("td"); td.textContent = cell(c.get(r), fields[i].type, state.decimals[i]); tr.appendChild(td); });
    return tr;
  };
  if (!state.live) {
    for (let r = 0; r < n && tbody.rows.length < MAX_TABLE_ROWS; r++) tbody.appendChild(row(r));
  } else {
    // Live: newest rows on top, a fixed window.
    for (let r = Math.max(0, n - 20); r < n; r++) tbody.insertBefore(row(r), tbody.firstChild);
    while (tbody.rows.length > MAX_TABLE_ROWS) tbody.deleteRow(-1);
  }
  if (n && state.quietTimer) { clearTimeout(state.quietTimer); state.quietTimer = null; show(""); }
  if (state.chart && state.chart.data.datasets.length) {
    pickSeries(cols, n);
    plot(cols, n);
  }
  state.rows += n;
  window.__sluice.batches.push({ at: performance.now(), rows: n });
  updateStatus();
}

/** Adds a batch's rows to the chart: every row of a live view (a moving
 *  window), every `stride`th row of a query, thinned to half whenever it
 *  reaches MAX_QUERY_POINTS so that it always spans the whole answer. */
function plot(cols, n) {
  const chart = state.chart;
  const data = chart.data;
  for (let r = 0; r < n; r++, state.seen++) {
    if (!state.live && state.seen % state.stride !== 0) continue;
    data.labels.push(chart.$xCol >= 0 ? toMs(cols[chart.$xCol].get(r)) : state.rows + r);
    for (const ds of data.datasets) {
      const v = cols[ds.col].get(r);
      ds.data.push(v === null ? null : Number(v));
    }
    if (!state.live && data.labels.length >= MAX_QUERY_POINTS) {
      const half = (a) => a.filter((_, k) => k % 2 === 0);
      data.labels = half(data.labels);
      for (const ds of data.datasets) ds.data = half(ds.data);
      state.stride *= 2;
    }
  }
  if (state.live && data.labels.length > LIVE_WINDOW) {
    const drop = data.labels.length - LIVE_WINDOW;
    data.labels.splice(0, drop);
    for (const ds of data.datasets) ds.data.splice(0, drop);
  }
  chart.update("none");
}

async function consume(queue, live) {
  try {
    const reader = await RecordBatchReader.from(queue);
    await reader.open();
    resetView(reader.schema.fields);
    for await (const batch of reader) addBatch(batch);
    if (!live) setState(`done: ${state.rows.toLocaleString()} rows`);
  } catch (e) {
    show(`Could not decode the data: ${e.message}`);
  }
}

function onText(msg) {
  switch (msg.type) {
    case "datasets": {
      const sel = $("datasets");
      const keep = sel.value || sel.dataset.want;
      sel.innerHTML = "";
      for (const d of msg.datasets) {
        const o = document.createElement("option");
        o.value = o.textContent = d;
        sel.appendChild(o);
      }
      if (keep && msg.datasets.includes(keep)) sel.value = keep;
      $("session-state").textContent = `connected to edge ${msg.edge}`;
      const allowed = jwtClaims(state.token).datasets;
      $("datasets-note").textContent = Array.isArray(allowed)
        ? `this session's token allows ${allowed.length === 1 ? `only ${allowed[0]}` : allowed.join(", ")}${allowed.length === 1 ? " (sign in again for another dataset)" : ""}`
        : "";
      break;
    }
    case "stream_start": {
      state.stream = new ChunkQueue();
      state.bytes = 0; state.rows = 0; state.t0 = performance.now(); state.decimals = [];
      setState(state.live ? `live: ${msg.dataset}` : `receiving ${msg.dataset}…`);
      consume(state.stream, state.live);
      break;
    }
    case "stream_end":
      window.__sluice.ends.push(performance.now());
      if (state.stream) state.stream.end();
      state.stream = null;
      $("stop").disabled = true;
      break;
    case "subscribed":
      break;
    case "error":
      if (state.quietTimer) { clearTimeout(state.quietTimer); state.quietTimer = null; }
      if (state.stream) { state.stream.end(); state.stream = null; }
      $("stop").disabled = true;
      state.lastError = msg.message || "";
      show(`${msg.message || msg.code} (${msg.code})`);
      break;
    default:
      break;
  }
}

function connect(url, token) {
  if (state.ws) state.ws.close(1000, "reconnecting");
  show("");
  state.token = token;
  const claims = jwtClaims(token);
  state.quota = Number(claims.quota || 0);
  updateStatus();
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  $("session-state").textContent = "connecting…";
  ws.onopen = () => {
    ws.send(JSON.stringify({ auth: token }));
    ws.send(JSON.stringify({ action: "list" }));
    $("workspace").hidden = false;
    setState("connected");
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      onText(msg);
    } else if (state.stream) {
      state.bytes += ev.data.byteLength;
      window.__sluice.binaries.push(performance.now());
      state.stream.push(new Uint8Array(ev.data));
      const now = performance.now();
      if (now - state.lastRateAt > 250) { state.lastRateAt = now; updateStatus(); }
    }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (state.stream) { state.stream.end(); state.stream = null; }
    state.ws = null;
    $("stop").disabled = true;
    $("session-state").textContent = "not connected";
    setState(`closed (${ev.code})`);
    // The close code's sentence, with the gateway's own detail when it gave one.
    const detail = state.lastError;
    state.lastError = "";
    if (ev.code !== 1000 || ev.reason) show(`${closeMessage(ev.code, ev.reason)}${detail ? ` ${detail}.` : ""}`);
    document.body.dataset.closeCode = String(ev.code);
  };
}

function run(action) {
  const dataset = $("datasets").value;
  if (!state.ws || !dataset) return;
  show("");
  state.live = action === "subscribe";
  resetView(null);
  // A new answer starts from zero: a refused one must not show the last one's figures.
  state.bytes = 0; state.rows = 0; state.t0 = 0; state.decimals = [];
  $("columns").innerHTML = "";
  updateStatus();
  setState(state.live ? `opening live view of ${dataset}…` : `asking for ${dataset}…`);
  if (state.quietTimer) clearTimeout(state.quietTimer);
  state.quietTimer = state.live ? setTimeout(() => {
    state.quietTimer = null;
    if (state.live && state.rows === 0) {
      show(`No rows from ${dataset} yet: it is not a live feed, or its source has written nothing since the view opened. Use Run query to read a file or table once.`, "info");
    }
  }, LIVE_QUIET_MS) : null;
  $("stop").disabled = false;
  state.ws.send(JSON.stringify({ action, dataset }));
}

async function signIn(form) {
  const f = Object.fromEntries(new FormData(form));
  const base = f.control.replace(/\/+$/, "");
  show("");
  let resp;
  try {
    resp = await fetch(`${base}/control/access`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Tenant-Slug": f.tenant || "local", Authorization: `Bearer ${f.user}` },
      body: JSON.stringify({ client_id: f.client, dataset_id: f.dataset, requested_ops: ["read"] }),
    });
  } catch (e) {
    show(`The control plane at ${base} cannot be reached (${e.message}).`);
    return;
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    show(`Access refused (${resp.status} ${body.error || ""}): ${body.message || resp.statusText}`);
    return;
  }
  $("datasets").dataset.want = body.dataset;
  window.__sluiceSid = body.session_id;
  state.release = () => fetch(`${base}/control/release/${body.session_id}`, {
    method: "POST", keepalive: true,
    headers: { "X-Tenant-Slug": f.tenant || "local", Authorization: `Bearer ${f.user}` },
  }).catch(() => {});
  connect(body.data_plane_url, body.session_token);
}

function init() {
  const defaultGateway = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
  const params = new URLSearchParams(location.hash.slice(1));
  const tf = $("token-form");
  tf.gateway.value = params.get("gateway") || defaultGateway;
  for (const k of ["control", "tenant", "client", "dataset", "user"]) {
    if (params.get(k)) $("control-form")[k].value = params.get(k);
  }
  if (params.get("dataset")) $("datasets").dataset.want = params.get("dataset");
  $("control-form").addEventListener("submit", (e) => { e.preventDefault(); signIn(e.target); });
  tf.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = tf.token.value.trim();
    const sid = jwtClaims(token).sid;
    if (!sid) { show("That is not a session token (no sid claim)."); return; }
    connect(`${tf.gateway.value.replace(/\/+$/, "")}/stream/${sid}`, token);
  });
  $("query").addEventListener("click", () => run("query"));
  $("live").addEventListener("click", () => run("subscribe"));
  $("refresh").addEventListener("click", () => state.ws && state.ws.send(JSON.stringify({ action: "list" })));
  $("stop").addEventListener("click", () => {
    // The protocol stops a stream by closing the session (the gateway
    // cancels it at the connector); the token is still good, so reconnect.
    const { ws, token } = state;
    if (!ws) return;
    if (state.stream) { state.stream.end(); state.stream = null; }
    $("stop").disabled = true;
    state.ws = null;
    ws.close(1000, "stopped");
    connect(ws.url, token);
    setState("stopped");
  });
  addEventListener("pagehide", () => state.release && state.release());
  updateStatus();
  // A ready session in the fragment (the demo prints one): connect at once.
  if (params.get("token")) {
    tf.token.value = params.get("token");
    tf.requestSubmit();
  }
}

init();
