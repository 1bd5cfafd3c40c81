// The live page: polls the JSON API and draws it. Every string from the database goes in
// through textContent, never as markup; the page changes nothing on the server.
"use strict";

const POLL_MS = 2000;
const HISTORY_EVERY = 5; // polls between sparkline refreshes
const EVENTS_KEPT = 50;
const TROUBLE = { dead: 0, stale: 1, busy: 2, idle: 3, exited: 4 };

let lastGood = null; // the last status document fetched
let lastEventId = null;
let events = [];
let polls = 0;
let sortKey = "trouble";
let sortDir = 1;

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0")).join(":");
}

function secs(v) {
  if (v === null || v === undefined) return "";
  return v < 10 ? v.toFixed(1) + " s" : Math.round(v) + " s";
}

async function getJSON(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), POLL_MS - 200);
  try {
    const r = await fetch(path, { signal: ctl.signal, cache: "no-store" });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return await r.json();
  } finally {
    clearTimeout(timer);
  }
}

function setStale(why) {
  document.body.classList.add("stale");
  document.body.classList.remove("loading");
  let asOf = "no data yet";
  if (lastGood) {
    const t = lastGood.scheduler.last_cycle_at || lastGood.generated_at;
    asOf = "data as of " + clock(t);
  }
  $("freshness").textContent = asOf + " (" + why + ")";
}

function setLive(doc) {
  document.body.classList.remove("stale", "loading");
  $("freshness").textContent = "live: cycle " + doc.scheduler.cycle + " at " +
    clock(doc.scheduler.last_cycle_at) + ", " + secs(doc.scheduler.cycle_age_s) + " ago";
}

function clear(tbody) {
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
}

function drawBanner(doc) {
  const idle = doc.idle;
  $("idle-verdict").textContent = idle.idle ? "yes" : "no";
  $("idle-verdict").className = idle.idle ? "ok" : "bad";
  $("idle-reason").textContent = idle.idle
    ? (idle.since ? "since " + clock(idle.since) : "")
    : "why not: " + idle.reason;
  const s = doc.scheduler;
  $("sched-verdict").textContent = s.alive ? "alive" : "not alive";
  $("sched-verdict").className = s.alive ? "ok" : "bad";
  $("sched-reason").textContent = s.reason + (s.host ? " (pid " + s.pid + " on " + s.host + ")" : "");
}

function drawPools(doc) {
  const tbody = $("pools").tBodies[0];
  clear(tbody);
  for (const p of doc.pools) {
    const lines = p.backlog.length ? p.backlog : [null];
    lines.forEach((b, i) => {
      const tr = el("tr");
      tr.appendChild(el("td", i === 0 ? p.pool : ""));
      for (const st of ["busy", "idle", "stale", "dead", "exited"]) {
        tr.appendChild(el("td", i === 0 ? p.workers[st] : "", "num " + st));
      }
      tr.appendChild(el("td", b ? b.category : "-"));
      tr.appendChild(el("td", b ? b.pending : "", "num"));
      tr.appendChild(el("td", b ? b.running : "", "num"));
      tr.appendChild(el("td", b ? secs(b.oldest_age_s) : "", "num"));
      tr.appendChild(el("td", b && b.starving ? "STARVING" : "", b && b.starving ? "yes" : ""));
      tbody.appendChild(tr);
    });
  }
}

function sortValue(w, key) {
  if (key === "trouble") return TROUBLE[w.state] ?? 9;
  const v = w[key];
  return v === null || v === undefined ? "" : v;
}

function drawWorkers(doc) {
  const rows = doc.workers.slice();
  rows.sort((a, b) => {
    const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
    if (x < y) return -sortDir;
    if (x > y) return sortDir;
    const t = (TROUBLE[a.state] ?? 9) - (TROUBLE[b.state] ?? 9);
    if (t) return t;
    return a.worker_id < b.worker_id ? -1 : a.worker_id > b.worker_id ? 1 : 0;
  });
  const tbody = $("workers").tBodies[0];
  clear(tbody);
  for (const w of rows) {
    const tr = el("tr", null, w.state);
    tr.dataset.worker = w.worker_id;
    tr.appendChild(el("td", w.state, "state"));
    tr.appendChild(el("td", w.worker_id));
    tr.appendChild(el("td", w.pool));
    tr.appendChild(el("td", w.category ?? ""));
    tr.appendChild(el("td", w.state === "busy" ? "busy for " + secs(w.busy_for_s) : "", "num"));
    tr.appendChild(el("td", secs(w.beat_age_s), "num"));
    tr.appendChild(el("td", w.host));
    tr.appendChild(el("td", w.pid, "num"));
    const why = w.evidence ? w.evidence + (w.detail ? ": " + w.detail : "") : (w.detail ?? "");
    tr.appendChild(el("td", why, "evidence"));
    tbody.appendChild(tr);
  }
}

function drawEvents() {
  const tbody = $("events").tBodies[0];
  clear(tbody);
  for (const e of events.slice().reverse()) {
    const tr = el("tr", null, e.event);
    tr.appendChild(el("td", clock(e.ts)));
    tr.appendChild(el("td", e.worker_id));
    tr.appendChild(el("td", e.event));
    tr.appendChild(el("td", e.category ?? ""));
    tr.appendChild(el("td", e.detail ?? ""));
    tbody.appendChild(tr);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function spark(target, values) {
  const box = $(target);
  while (box.firstChild) box.removeChild(box.firstChild);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 240 40");
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length) {
    const max = Math.max(1, ...values);
    const step = values.length > 1 ? 240 / (values.length - 1) : 0;
    const pts = values.map((v, i) => (i * step).toFixed(1) + "," + (38 - (v / max) * 36).toFixed(1));
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    const title = document.createElementNS(SVG, "title");
    title.textContent = "now " + values[values.length - 1] + ", peak " + max;
    svg.appendChild(title);
  }
  box.appendChild(svg);
}

async function pollHistory() {
  const h = await getJSON("/api/v1/history?points=60&window=600");
  spark("spark-backlog", h.points.map((p) => p.backlog_pending));
  spark("spark-busy", h.points.map((p) => p.workers_busy));
}

async function pollEvents() {
  const q = lastEventId === null ? "limit=" + EVENTS_KEPT : "after=" + lastEventId + "&limit=" + EVENTS_KEPT;
  const doc = await getJSON("/api/v1/events?" + q);
  if (doc.events.length) {
    events = events.concat(doc.events).slice(-EVENTS_KEPT);
    drawEvents();
  }
  if (doc.last_id !== null) lastEventId = doc.last_id;
}

async function poll() {
  polls += 1;
  try {
    const doc = await getJSON("/api/v1/status");
    lastGood = doc;
    drawBanner(doc);
    drawPools(doc);
    drawWorkers(doc);
    const s = doc.scheduler;
    if (s.fresh_for_s === null || s.cycle_age_s === null) {
      setStale("no scheduler has run");
    } else if (!s.alive) {
      setStale(s.reason);
    } else if (s.cycle_age_s > s.fresh_for_s) {
      // The same bound as liveness.judge: 3 intervals, and at least interval + 2 s.
      setStale("the scheduler's last cycle is " + secs(s.cycle_age_s) + " old");
    } else {
      setLive(doc);
    }
  } catch (err) {
    setStale("cannot reach sqlmon serve");
    return;
  }
  try {
    await pollEvents();
    if (polls % HISTORY_EVERY === 1) await pollHistory();
  } catch (err) {
    // The next poll tries again; the status above already says whether the data is live.
  }
}

function start() {
  for (const th of document.querySelectorAll("#workers th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : 1;
      sortKey = key;
      if (lastGood) drawWorkers(lastGood);
    });
  }
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
