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
const MAX_QUERY_POINTS = 5000;
const LIVE_WINDOW = 300;

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

function cell(v, type) {
  if (v === null || v === undefined) return "";
  if (type && timeType(type)) {
    const ms = typeof v === "bigint" ? Number(v) : v instanceof Date ? v.getTime() : Number(v);
    return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
  }
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
  if (typeof v === "object" && v.toJSON) return JSON.stringify(v.toJSON());
  return String(v);
}

const numericType = (t) => DataType.isInt(t) || DataType.isFloat(t) || DataType.isDecimal(t);
const timeType = (t) => DataType.isTimestamp(t) || DataType.isDate(t);

/** Timeline the browser tests read: when batches rendered, when streams ended. */
window.__sluice = { batches: [], ends: [], binaries: [] };

const state = {
  ws: null, token: "", quota: 0, bytes: 0, rows: 0, t0: 0,
  stream: null, chart: null, live: false, release: null, lastRateAt: 0,
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
  $("st-rate").textContent = `${secs > 0 ? (state.bytes / 1e6 / secs).toFixed(1) : "0"} MB/s`;
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
  const ys = schemaFields.map((f, i) => [f, i]).filter(([f]) => numericType(f.type)).slice(0, 3);
  state.chart = new Chart($("chart"), {
    type: "line",
    data: { labels: [], datasets: ys.map(([f, i]) => ({ label: f.name, data: [], col: i, pointRadius: 0, borderWidth: 1.5 })) },
    options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { x: { ticks: { maxTicksLimit: 8 } } } },
  });
  state.chart.$xCol = schemaFields.findIndex((f) => timeType(f.type));
}

function addBatch(batch) {
  const fields = batch.schema.fields;
  const cols = fields.map((_, i) => batch.getChildAt(i));
  const tbody = $("rows").querySelector("tbody");
  const n = batch.numRows;
  if (!state.live) {
    for (let r = 0; r < n && tbody.rows.length < MAX_TABLE_ROWS; r++) {
      const tr = document.createElement("tr");
      cols.forEach((c, i) => { const td = document.createElement("td"); td.textContent = cell(c.get(r), fields[i].type); tr.appendChild(td); });
      tbody.appendChild(tr);
    }
  } else {
    // Live: newest rows on top, a fixed window.
    for (let r = Math.max(0, n - 20); r < n; r++) {
      const tr = document.createElement("tr");
      cols.forEach((c, i) => { const td = document.createElement("td"); td.textContent = cell(c.get(r), fields[i].type); tr.appendChild(td); });
      tbody.insertBefore(tr, tbody.firstChild);
    }
    while (tbody.rows.length > MAX_TABLE_ROWS) tbody.deleteRow(-1);
  }
  const chart = state.chart;
  if (chart && chart.data.datasets.length) {
    const labels = chart.data.labels;
    const limit = state.live ? Infinity : MAX_QUERY_POINTS;
    for (let r = 0; r < n && labels.length < limit; r++) {
      const x = chart.$xCol >= 0
        ? cell(cols[chart.$xCol].get(r), fields[chart.$xCol].type).slice(11, 23)
        : String(state.rows + r);
      labels.push(x);
      for (const ds of chart.data.datasets) {
        const v = cols[ds.col].get(r);
        ds.data.push(v === null ? null : Number(v));
      }
    }
    if (state.live && labels.length > LIVE_WINDOW) {
      const drop = labels.length - LIVE_WINDOW;
      labels.splice(0, drop);
      for (const ds of chart.data.datasets) ds.data.splice(0, drop);
    }
    chart.update("none");
  }
  state.rows += n;
  window.__sluice.batches.push({ at: performance.now(), rows: n });
  updateStatus();
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
      break;
    }
    case "stream_start": {
      state.stream = new ChunkQueue();
      state.bytes = 0; state.rows = 0; state.t0 = performance.now();
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
      if (state.stream) { state.stream.end(); state.stream = null; }
      $("stop").disabled = true;
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
    if (ev.code !== 1000 || ev.reason) show(closeMessage(ev.code, ev.reason));
    document.body.dataset.closeCode = String(ev.code);
  };
}

function run(action) {
  const dataset = $("datasets").value;
  if (!state.ws || !dataset) return;
  show("");
  state.live = action === "subscribe";
  resetView(null);
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
