// The dashboard: polls the JSON API every 2 s and redraws; no build step, no CDN.
"use strict";
const REFRESH_MS = 2000;
const HISTORY = 150; // samples kept for the rate chart (5 minutes at 2 s)
const PAGE = 25;
let offset = 0;
let last = null; // {t, done: {function: completed}} of the previous poll
const history = [];

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("gearmill-token") || "";
tokenInput.addEventListener("change", () => localStorage.setItem("gearmill-token", tokenInput.value));

function headers() {
  const t = tokenInput.value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function get(path) {
  const r = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function drawRate() {
  const c = $("rate");
  const w = (c.width = c.clientWidth * devicePixelRatio);
  const h = (c.height = 90 * devicePixelRatio);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history);
  g.strokeStyle = "#2b6cb0";
  g.lineWidth = 2 * devicePixelRatio;
  g.beginPath();
  history.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * w;
    const y = h - (v / max) * (h - 14 * devicePixelRatio) - 2;
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#66707a";
  g.font = 11 * devicePixelRatio + "px system-ui";
  g.fillText("max " + max.toFixed(1) + "/s", 4, 12 * devicePixelRatio);
}

function showFunctions(functions, now) {
  const done = {};
  let total = 0;
  const rows = functions.map((f) => {
    done[f.name] = f.completed;
    const prev = last && last.done[f.name];
    const dt = last ? (now - last.t) / 1000 : 0;
    const rate = last && prev !== undefined && dt > 0 ? (f.completed - prev) / dt : 0;
    total += Math.max(rate, 0);
    const tr = document.createElement("tr");
    tr.dataset.function = f.name;
    tr.append(
      cell(f.name),
      cell(f.queued, "num queued"),
      cell(f.running, "num running"),
      cell(f.workers, "num workers"),
      cell(f.completed, "num done"),
      cell(f.failed, "num"),
      cell(rate.toFixed(1), "num"),
    );
    return tr;
  });
  fill($("functions").tBodies[0], rows);
  if (last) {
    history.push(total);
    if (history.length > HISTORY) history.shift();
  }
  last = { t: now, done };
  drawRate();
}

function showWorkers(workers) {
  fill(
    $("workers").tBodies[0],
    workers.map((w) => {
      const tr = document.createElement("tr");
      tr.append(cell(w.address), cell(w.client_id), cell(w.functions.join(", ")), cell(w.running.length, "num"));
      return tr;
    }),
  );
}

function showNodes(nodes) {
  // only for servers sharing a store (PostgreSQL, Redis); hidden on a store of one server
  $("servers").hidden = !nodes.shared;
  fill(
    $("nodes").tBodies[0],
    nodes.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.node;
      tr.append(
        cell(n.node, "node"),
        cell(n.owner, "owner"),
        cell(n.expired ? "expired" : seconds(n.heartbeat_left), n.expired ? "left error" : "left"),
        cell(n.jobs, "num jobs"),
        cell(n.self ? "this server" : "", "self"),
      );
      return tr;
    }),
  );
}

function progress(job) {
  const [num, den] = job.progress;
  const td = document.createElement("td");
  if (den > 0) {
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.title = num + " / " + den;
    const inner = document.createElement("span");
    inner.style.width = Math.min(100, (100 * num) / den).toFixed(1) + "%";
    bar.append(inner);
    td.append(bar, " " + Math.round((100 * num) / den) + "%");
  }
  return td;
}

async function cancel(handle) {
  const r = await fetch("/api/jobs/" + encodeURIComponent(handle) + "/cancel", { method: "POST", headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) alert(body.error || "cancel failed: " + r.status);
  refresh();
}

function when(epoch) {
  if (epoch === null || epoch === undefined) return "";
  return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

async function requeue(handle) {
  const r = await fetch("/api/dead/" + encodeURIComponent(handle) + "/requeue", { method: "POST", headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) alert(body.error || "requeue failed: " + r.status);
  refresh();
}

function showDead(page) {
  $("deadcount").textContent = page.total ? `(${page.total})` : "(none)";
  fill(
    $("dead").tBodies[0],
    page.jobs.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.handle = d.handle;
      const act = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "requeue";
      b.textContent = "requeue";
      b.onclick = () => requeue(d.handle);
      act.append(b);
      const error = cell(d.error || "—", "error");
      error.title = d.error;
      tr.append(cell(d.handle), cell(d.function), cell(d.attempts, "num"), cell(d.reason), error, cell(when(d.died)), act);
      return tr;
    }),
  );
}

function showSchedules(list) {
  fill(
    $("schedules").tBodies[0],
    list.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.schedule = s.name;
      tr.append(
        cell(s.name, "name"), cell(s.cron, "cron"), cell(s.function, "function"),
        cell(s.paused ? "paused" : when(s.next_at), "next"), cell(when(s.last_at)), cell(s.fired, "num"),
      );
      return tr;
    }),
  );
}

function showJobs(page) {
  $("jobcount").textContent = page.total ? `(${page.offset + 1}–${page.offset + page.jobs.length} of ${page.total})` : "(none)";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.offset + page.jobs.length >= page.total;
  fill(
    $("jobs").tBodies[0],
    page.jobs.map((j) => {
      const tr = document.createElement("tr");
      tr.dataset.handle = j.handle;
      const act = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "cancel";
      b.textContent = "cancel";
      b.onclick = () => cancel(j.handle);
      act.append(b);
      tr.append(cell(j.handle), cell(j.function), cell(j.state + (j.background ? "" : " (fg)")), progress(j), cell(seconds(j.seconds)), act);
      return tr;
    }),
  );
}

async function refresh() {
  const status = $("status");
  try {
    const state = $("state").value;
    const q = `/api/jobs?offset=${offset}&limit=${PAGE}` + (state ? "&state=" + state : "");
    const [summary, functions, workers, jobs, dead, schedules, nodes] = await Promise.all([
      get("/api/summary"), get("/api/functions"), get("/api/workers"), get(q),
      get("/api/dead?limit=50"), get("/api/schedules"), get("/api/nodes"),
    ]);
    const now = Date.now();
    $("summary").textContent =
      `${summary.version} · up ${seconds(summary.uptime)} · ${summary.jobs_queued} queued · ` +
      `${summary.jobs_running} running · ${summary.workers} workers · ${summary.peers} connections`;
    status.textContent = summary.accepting ? "live" : "stopping";
    status.className = "pill " + (summary.accepting ? "ok" : "bad");
    showFunctions(functions, now);
    showWorkers(workers);
    showJobs(jobs);
    showDead(dead);
    showSchedules(schedules);
    showNodes(nodes);
  } catch (e) {
    status.textContent = "unreachable";
    status.className = "pill bad";
  }
}

$("prev").onclick = () => { offset = Math.max(0, offset - PAGE); refresh(); };
$("next").onclick = () => { offset += PAGE; refresh(); };
$("state").onchange = () => { offset = 0; refresh(); };
refresh();
setInterval(refresh, REFRESH_MS);
