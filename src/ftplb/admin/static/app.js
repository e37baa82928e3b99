// ftplb status page: who is connected, who is banned, what changed. Polls the
// admin API every 2 s; charts are SVG drawn here (no library, works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const tbody = document.querySelector("#backends tbody");
const sessionBody = document.querySelector("#sessions tbody");
const banBody = document.querySelector("#bans tbody");
const summary = $("summary");
const errorBox = $("error");
const tokenBox = $("token-box");
const tokenInput = $("token");
const previous = new Map(); // name -> {bytes, time}: for throughput
const PAGE = 50; // sessions per page: the page stays fast with 10,000 of them
let offset = 0;
let history = null;

// The token is kept for this tab only (sessionStorage), asked for once.
tokenInput.value = sessionStorage.getItem("ftplb-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("ftplb-token", tokenInput.value));

function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function age(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function empty(body, columns, text) {
  const tr = document.createElement("tr");
  const td = cell(text, "empty");
  td.colSpan = columns;
  tr.append(td);
  body.replaceChildren(tr);
}

// Changing calls are JSON with the token: the server refuses anything a
// cross-site form could send, and anything without the token when one is set.
async function change(method, url, what) {
  const headers = { "Content-Type": "application/json" };
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  const r = await fetch(url, { method, headers, body: "{}" });
  errorBox.textContent = r.ok ? "" : `${what}: HTTP ${r.status}` +
    (r.status === 401 ? " (enter the token above)" : "");
  refresh();
}

const SVG = "http://www.w3.org/2000/svg";

function chart(values, kind, label) {
  const w = 120, h = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart " + kind);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const known = values.map((v, i) => [i, v]).filter(([, v]) => v !== null);
  const top = Math.max(1, ...known.map(([, v]) => v));
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const points = known.map(([i, v]) => `${(i * step).toFixed(1)},${(h - 2 - (v / top) * (h - 4)).toFixed(1)}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.dataset.points = String(points.length);
  const title = document.createElementNS(SVG, "title");
  const last = known.length ? known[known.length - 1][1] : 0;
  title.textContent = `${label}: now ${kind === "throughput" ? human(last) + "/s" : last}, ` +
    `peak ${kind === "throughput" ? human(top) + "/s" : top} (15 min)`;
  svg.append(title, line);
  return svg;
}

function row(b, now) {
  const tr = document.createElement("tr");
  tr.dataset.backend = b.name;
  const total = b.bytes.in + b.bytes.out;
  const prev = previous.get(b.name);
  const rate = prev && now > prev.time ? (total - prev.bytes) / ((now - prev.time) / 1000) : 0;
  previous.set(b.name, { bytes: total, time: now });
  tr.append(cell(b.name), cell(b.address));
  const state = cell("");
  const badge = document.createElement("span");
  badge.className = "state " + b.state;
  badge.textContent = b.state;
  state.append(badge);
  tr.append(state, cell(b.check.status));
  tr.append(cell(b.sessions.current, "num"), cell(b.sessions.total, "num"));
  tr.append(cell(human(b.bytes.in), "num"), cell(human(b.bytes.out), "num"));
  tr.append(cell(human(Math.max(0, rate)) + "/s", "num"));
  const charts = cell("", "charts");
  const series = history && history.backends[b.name];
  if (series) {
    charts.append(chart(series.sessions, "sessions", "sessions"), chart(series.throughput, "throughput", "throughput"));
  }
  tr.append(charts, cell(b.weight, "num"));
  const actions = cell("");
  const drained = b.draining || b.disabled;
  const button = document.createElement("button");
  button.textContent = drained ? "Enable" : "Drain";
  button.dataset.action = drained ? "enable" : "drain";
  button.addEventListener("click", () =>
    change("POST", `/api/backends/${encodeURIComponent(b.name)}/${button.dataset.action}`, `${button.dataset.action} ${b.name}`));
  actions.append(button);
  tr.append(actions);
  return tr;
}

function sessionRow(s, now) {
  const tr = document.createElement("tr");
  tr.dataset.session = s.id;
  tr.append(cell(s.client), cell(s.user || "–"), cell(s.backend || "–"));
  tr.append(cell(age(now / 1000 - s.started), "num"), cell(human(s.bytes_in), "num"), cell(human(s.bytes_out), "num"));
  const transfer = cell("");
  if (s.transfer) {
    const t = s.transfer;
    transfer.textContent = `${t.direction} ${t.file || ""} ${human(t.bytes)} `;
    const bar = document.createElement("span");
    bar.className = "progress";
    const fill = document.createElement("span");
    // No size is known ahead: the bar fills as MiBs move (a full bar is 64 MiB).
    fill.style.width = Math.min(100, (t.bytes / (64 * 1048576)) * 100) + "%";
    bar.append(fill);
    transfer.append(bar);
  } else {
    transfer.textContent = "idle";
  }
  const close = document.createElement("button");
  close.textContent = "Close";
  close.dataset.action = "close";
  close.addEventListener("click", () => change("DELETE", `/api/sessions/${s.id}`, `close session ${s.client}`));
  const actions = cell("");
  actions.append(close);
  tr.append(transfer, actions);
  return tr;
}

function banRow(b) {
  const tr = document.createElement("tr");
  tr.dataset.ban = b.address;
  tr.append(cell(b.address), cell(new Date(b.until * 1000).toLocaleTimeString()));
  const lift = document.createElement("button");
  lift.textContent = "Lift";
  lift.dataset.action = "lift";
  lift.addEventListener("click", () => change("DELETE", `/api/bans/${encodeURIComponent(b.address)}`, `lift ban of ${b.address}`));
  const actions = cell("");
  actions.append(lift);
  tr.append(actions);
  return tr;
}

function eventItem(e) {
  const li = document.createElement("li");
  li.dataset.kind = e.kind;
  const when = document.createElement("time");
  when.textContent = new Date(e.time * 1000).toLocaleTimeString() + " ";
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = e.kind;
  li.append(when, kind, document.createTextNode(e.text));
  return li;
}

async function refresh() {
  try {
    const get = (url) => fetch(url).then((r) => { if (!r.ok) throw new Error(url + ": HTTP " + r.status); return r; });
    const [status, backends, sessionsResponse, bans, events, charts] = await Promise.all([
      get("/api/status").then((r) => r.json()),
      get("/api/backends").then((r) => r.json()),
      get(`/api/sessions?limit=${PAGE}&offset=${offset}`),
      get("/api/bans").then((r) => r.json()),
      get("/api/events?limit=50").then((r) => r.json()),
      get("/api/history").then((r) => r.json()),
    ]);
    history = charts;
    const sessions = await sessionsResponse.json();
    const totalSessions = Number(sessionsResponse.headers.get("X-Total-Count") || sessions.length);
    const now = Date.now();
    tbody.replaceChildren(...backends.map((b) => row(b, now)));
    if (sessions.length) sessionBody.replaceChildren(...sessions.map((s) => sessionRow(s, now)));
    else empty(sessionBody, 8, "nobody is connected");
    $("session-count").textContent = `(${totalSessions})`;
    $("page").textContent = totalSessions > PAGE ? `${offset + 1}–${offset + sessions.length} of ${totalSessions}` : "";
    $("prev").hidden = offset === 0;
    $("next").hidden = offset + PAGE >= totalSessions;
    if (bans.length) banBody.replaceChildren(...bans.map(banRow));
    else empty(banBody, 3, "nobody is banned");
    $("ban-count").textContent = `(${bans.length})`;
    $("events").replaceChildren(...events.slice().reverse().map(eventItem));
    const healthy = backends.filter((b) => b.up).length;
    const held = backends.filter((b) => b.draining || b.disabled).length;
    summary.textContent = `${status.mode} mode, ${status.balance}, ${status.sessions} sessions, ` +
      `${healthy} of ${backends.length} backends healthy` + (held ? `, ${held} drained` : "") +
      ` — ftplb ${status.version}`;
    tokenBox.hidden = !status.token_required;
    const ports = status.data_ports;
    $("ports").hidden = !ports;
    if (ports) $("ports").textContent = `Data ports: ${ports.in_use} of ${ports.total} with passive requests waiting ` +
      `(${ports.waiting} requests; a port serves many clients), ${ports.open} data connections open`;
    const cluster = status.cluster;
    $("cluster").hidden = !cluster;
    if (cluster) {
      const members = (cluster.members || []).map((m) =>
        `${m.node}${m.node === cluster.node ? " (this node)" : ""}: ${m.sessions} sessions, seen ${age(now / 1000 - m.last_seen)} ago`);
      $("cluster").textContent = `Cluster: Redis ${cluster.connected ? "connected" : "UNREACHABLE (this node goes on alone)"}, ` +
        `${cluster.nodes} nodes` + (members.length ? " — " + members.join("; ") : "") +
        (cluster.advertise && cluster.data_connections ?
          `. Data connections forwarded to other nodes: ${cluster.data_connections.forwarded}, ` +
          `taken from them: ${cluster.data_connections.joined}` : "");
    }
    if (errorBox.textContent.startsWith("cannot reach")) errorBox.textContent = "";
  } catch (e) {
    errorBox.textContent = "cannot reach the balancer: " + e;
  }
}

$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
$("next").addEventListener("click", () => { offset += PAGE; refresh(); });
refresh();
setInterval(refresh, 2000);
