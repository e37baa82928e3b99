// ftplb status page: polls /api/backends, draws one row per backend.
"use strict";

const tbody = document.querySelector("#backends tbody");
const summary = document.getElementById("summary");
const errorBox = document.getElementById("error");
const tokenBox = document.getElementById("token-box");
const tokenInput = document.getElementById("token");
const previous = new Map(); // name -> {bytes, time}: for throughput

tokenInput.value = sessionStorage.getItem("ftplb-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("ftplb-token", tokenInput.value));

function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function act(name, action) {
  // Changing calls must be JSON: the server refuses anything a cross-site form could send.
  const headers = { "Content-Type": "application/json" };
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  const url = `/api/backends/${encodeURIComponent(name)}/${action}`;
  const r = await fetch(url, { method: "POST", headers, body: "{}" });
  errorBox.textContent = r.ok ? "" : `${action} ${name}: HTTP ${r.status}`;
  refresh();
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
  tr.append(cell(human(Math.max(0, rate)) + "/s", "num"), cell(b.weight, "num"));
  const actions = cell("");
  const drained = b.draining || b.disabled;
  const button = document.createElement("button");
  button.textContent = drained ? "Enable" : "Drain";
  button.dataset.action = drained ? "enable" : "drain";
  button.addEventListener("click", () => act(b.name, button.dataset.action));
  actions.append(button);
  tr.append(actions);
  return tr;
}

async function refresh() {
  try {
    const [status, backends] = await Promise.all([
      fetch("/api/status").then((r) => r.json()),
      fetch("/api/backends").then((r) => r.json()),
    ]);
    const now = Date.now();
    tbody.replaceChildren(...backends.map((b) => row(b, now)));
    const healthy = backends.filter((b) => b.up).length;
    const held = backends.filter((b) => b.draining || b.disabled).length;
    summary.textContent = `${status.mode} mode, ${status.balance}, ${status.sessions} sessions, ` +
      `${healthy} of ${backends.length} backends healthy` + (held ? `, ${held} drained` : "") +
      ` — ftplb ${status.version}`;
    tokenBox.hidden = !status.token_required;
  } catch (e) {
    errorBox.textContent = "cannot reach the balancer: " + e;
  }
}

refresh();
setInterval(refresh, 2000);
