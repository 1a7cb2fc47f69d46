// pgmta dashboard: asks for the API token once (kept in sessionStorage for
// this tab only), then polls the HTTP API: status, queues, nodes and jobs
// every 2 s, the charts and breakdowns (/api/stats, /api/dashboard, which
// read the accounting) every 10 s. Every value from the API is inserted as
// text, never as markup. Charts: charts.js.
"use strict";

const REFRESH_MS = 2000;
const CHARTS_MS = 10000;
const TOKEN_KEY = "pgmta.token";
const COLORS = { delivered: "#1f7a3a", bounced: "#b3261e", deferred: "#d08700" };
let timer = null;
let chartTimer = null;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class AuthError extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (res.status === 401) throw new AuthError("wrong token");
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    body = null;
  }
  if (!res.ok) throw new Error((body && body.error) || res.status + " " + res.statusText);
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// A timestamptz as PostgreSQL writes it ("2026-12-03 12:00:00+00").
function parseTime(v) {
  return new Date(v.replace(" ", "T").replace(/([+-]\d\d)$/, "$1:00"));
}

function fmtTime(v) {
  if (!v) return "";
  const d = parseTime(v);
  if (isNaN(d)) return v;
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 0) return "in " + age(-s);
  return age(s) + " ago";
}

function age(s) {
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
}

function setState(text, ok) {
  const s = $("state");
  s.textContent = text;
  s.className = "state " + (ok ? "ok" : "bad");
}

function renderStatus(st) {
  const dl = $("status");
  dl.replaceChildren();
  const items = [
    ["queued", st.queued], ["ready", st.ready], ["deferred", st.deferred],
    ["in flight", st.in_flight], ["queues", st.queues], ["paused queues", st.paused_queues],
    ["nodes alive", st.nodes_alive], ["delivered 1h", st.delivered_1h],
    ["bounced 1h", st.bounced_1h], ["backoff queues", backoffQueues],
  ];
  for (const [k, v] of items) {
    const d = el("div");
    d.append(el("dt", k), el("dd", v));
    dl.append(d);
  }
  $("node").textContent = (st.node || "") + (st.version ? " · pgmta " + st.version : "");
}

function buttonCell(button) {
  const td = el("td");
  td.append(button);
  return td;
}

function steerButton(kind, value, paused) {
  const b = el("button", paused ? "Resume" : "Pause");
  b.type = "button";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await api(paused ? "/api/resume" : "/api/pause", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(kind === "queue"
          ? { queue: value.domain, vmta: value.vmta || "" } : { job: value }).toString(),
      });
      await Promise.all([refresh(), refreshCharts()]);
    } catch (e) {
      setState(e.message, false);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

// Why a queue is not sending: the place for a reason column of mta.queues
// (e.g. deferred by TLS policy) once there is one; today its last error.
function queueReason(q) {
  return q.reason || q.last_error || "";
}

function renderQueues(rows) {
  const f = $("filter").value.trim().toLowerCase();
  const held = $("held-only").checked;
  const tb = $("queues").tBodies[0];
  tb.replaceChildren();
  for (const q of rows) {
    if (f && !q.domain.includes(f)) continue;
    if (held && !q.paused && !q.backoff) continue;
    const tr = el("tr");
    if (q.paused) tr.className = "paused";
    else if (q.backoff) tr.className = "backoff";
    tr.append(
      el("td", q.domain), el("td", q.vmta || ""), el("td", q.pipe),
      el("td", q.queued, "n"), el("td", q.ready, "n"), el("td", q.deferred, "n"),
      el("td", q.in_flight, "n"), el("td", fmtTime(q.oldest)),
      el("td", q.paused ? "yes" : "", q.paused ? "yes" : ""),
      el("td", q.backoff ? "yes" : "", q.backoff ? "yes" : ""),
      el("td", q.connections, "n"), el("td", q.rollup_key || ""),
      el("td", queueReason(q), "err"));
    tr.append(buttonCell(steerButton("queue", { domain: q.domain, vmta: q.vmta }, q.paused)));
    tb.append(tr);
  }
}

function renderNodes(rows) {
  const tb = $("nodes").tBodies[0];
  tb.replaceChildren();
  for (const n of rows) {
    const tr = el("tr");
    tr.append(el("td", n.name), el("td", n.pipe || "(root)"), el("td", n.process_index),
      el("td", n.pid), el("td", n.host), el("td", fmtTime(n.started_at)),
      el("td", fmtTime(n.heartbeat_at)), el("td", n.state),
      el("td", n.alive ? "yes" : "no"));
    tb.append(tr);
  }
}

function renderJobs(rows) {
  const tb = $("jobs").tBodies[0];
  tb.replaceChildren();
  for (const j of rows) {
    const tr = el("tr");
    if (j.paused) tr.className = "paused";
    tr.append(el("td", j.job_id), el("td", j.paused ? "yes" : "", j.paused ? "yes" : ""),
      el("td", j.queued, "n"), el("td", j.delivered, "n"), el("td", j.bounced, "n"),
      el("td", j.deferred, "n"), el("td", fmtTime(j.created_at)));
    tr.append(buttonCell(steerButton("job", j.job_id, j.paused)));
    tb.append(tr);
  }
}

// ---- charts and breakdowns ----

function renderStats(rows) {
  const pts = rows.map((r) => ({ t: parseTime(r.minute), delivered: r.delivered,
    bounced: r.bounced, deferred: r.deferred }));
  drawTimeChart($("traffic"), pts, [
    { key: "delivered", label: "delivered", color: COLORS.delivered, area: true },
    { key: "deferred", label: "deferred", color: COLORS.deferred },
    { key: "bounced", label: "bounced", color: COLORS.bounced },
  ]);
  for (const k of ["delivered", "bounced", "deferred"])
    $("sum-" + k).textContent = pts.reduce((a, p) => a + p[k], 0);
}

// A cell with a bar of value / max of the column.
function barCell(value, max, cls) {
  const td = el("td", null, "barcol");
  const b = el("span", null, "bar " + (cls || ""));
  b.style.width = (max > 0 ? Math.max(1, (100 * value) / max) : 0).toFixed(1) + "%";
  td.append(b);
  return td;
}

function fillTable(id, rows, cells, empty) {
  const t = $(id);
  const tb = t.tBodies[0];
  tb.replaceChildren();
  for (const r of rows) {
    const tr = el("tr");
    tr.append(...cells(r));
    tb.append(tr);
  }
  if (!rows.length) {
    const td = el("td", empty || "none", "muted");
    td.colSpan = t.tHead.rows[0].cells.length;
    const tr = el("tr");
    tr.append(td);
    tb.append(tr);
  }
}

function queueName(q) {
  return q.domain + (q.vmta ? "/" + q.vmta : "") + (q.pipe ? " (" + q.pipe + ")" : "");
}

function stateCell(q) {
  const td = el("td");
  if (q.paused) td.append(el("span", "paused", "badge paused"));
  if (q.backoff) td.append(el("span", "backoff", "badge backoff"));
  if (q.last_error) td.title = q.last_error;
  return td;
}

// Rows of /api/dashboard's vmtas or nodes (named by key) into a table; the
// two tables have one header, made here.
function fillThroughput(id, rows, key) {
  const head = $(id).tHead;
  if (!head.rows.length) {
    const tr = el("tr");
    tr.append(el("th", key), el("th", "delivered", "n"), el("th", "bounced", "n"),
      el("th", "deferred", "n"), el("th", "/min", "n"), el("th", null, "barcol"));
    tr.cells[4].title = "delivered per minute, last 5 minutes";
    head.append(tr);
  }
  const total = (r) => r.delivered + r.bounced + r.deferred;
  const max = Math.max(0, ...rows.map(total));
  fillTable(id, rows, (r) => [el("td", r[key] === null ? "(none)" : r[key]),
    el("td", r.delivered, "n"), el("td", r.bounced, "n"), el("td", r.deferred, "n"),
    el("td", (r.delivered_5m / 5).toFixed(1), "n"), barCell(total(r), max, "ok")]);
}

function renderDashboard(d) {
  const cats = d.bounce_categories.map((c) => ({ label: c.category, value: c.bounced }));
  if (cats.length > 8) {
    const rest = cats.splice(7);
    cats.push({ label: "(" + rest.length + " more)", value: rest.reduce((a, c) => a + c.value, 0) });
  }
  drawBars($("bounces"), cats, COLORS.bounced, 8);

  const qmax = Math.max(0, ...d.top_backlog.map((q) => q.queued));
  fillTable("top-backlog", d.top_backlog, (q) => [el("td", queueName(q)),
    el("td", q.queued, "n"), el("td", q.deferred, "n"), stateCell(q),
    barCell(q.queued, qmax), buttonCell(steerButton("queue", q, q.paused))], "nothing queued");
  fillTable("top-deferral", d.top_deferral, (q) => [el("td", q.queue),
    el("td", q.delivered + q.bounced + q.deferred, "n"), el("td", q.deferred, "n"),
    el("td", (100 * q.rate).toFixed(1) + "%", "n"), barCell(q.rate, 1, "warn")],
  "no deferrals");
  fillThroughput("vmta-throughput", d.vmtas, "vmta");
  fillThroughput("node-throughput", d.nodes, "node");
  fillTable("webhooks", d.webhooks, (w) => [el("td", w.consumer),
    el("td", w.events_behind, "n"), el("td", age(Math.round(w.seconds_behind)), "n"),
    el("td", w.failures, w.failures ? "n bad" : "n"), el("td", w.last_error || "", "err")],
  "no consumer");
  $("suppression-part").hidden = !d.suppression.length;
  fillTable("suppression", d.suppression, (s) => [el("td", s.source), el("td", s.entries, "n")]);
}

// The IP warm-up plans (/api/warmup, mta.warmup_status): shown only when
// there is one. "sent / limit" for today and this hour.
function renderWarmup(rows) {
  $("warmup-part").hidden = !rows.length;
  const used = (sent, limit) => (limit === null ? String(sent) : sent + " / " + limit);
  fillTable("warmup", rows, (w) => [el("td", w.ip), el("td", w.key), el("td", w.day, "n"),
    el("td", w.state, w.state === "advancing" || w.state === "done" ? "" : "warn"),
    el("td", used(w.sent_today, w.daily_limit), "n"),
    el("td", used(w.sent_this_hour, w.hourly_limit), "n"), el("td", w.reason || "")]);
}

async function refreshCharts() {
  try {
    const [stats, dash, warmup] = await Promise.all([
      api("/api/stats?hours=" + encodeURIComponent($("hours").value)), api("/api/dashboard"),
      api("/api/warmup"),
    ]);
    renderStats(stats);
    renderDashboard(dash);
    renderWarmup(warmup);
  } catch (e) {
    if (e instanceof AuthError) {
      showLogin("The token was refused.");
      return;
    }
    setState(e.message, false);
  }
}

let lastQueues = [];
let backoffQueues = 0;

async function refresh() {
  try {
    const [st, queues, nodes, jobs] = await Promise.all([
      api("/api/status"), api("/api/queues"), api("/api/nodes"), api("/api/jobs"),
    ]);
    backoffQueues = queues.filter((q) => q.backoff).length;
    renderStatus(st);
    lastQueues = queues;
    renderQueues(queues);
    renderNodes(nodes);
    renderJobs(jobs);
    setState("updated " + new Date().toLocaleTimeString(), true);
  } catch (e) {
    if (e instanceof AuthError) {
      showLogin("The token was refused.");
      return;
    }
    setState(e.message, false);
  }
}

function schedule() {
  clearInterval(timer);
  clearInterval(chartTimer);
  timer = setInterval(refresh, REFRESH_MS);
  chartTimer = setInterval(refreshCharts, CHARTS_MS);
}

function showLogin(msg) {
  clearInterval(timer);
  clearInterval(chartTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = msg || "";
  $("token").focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  refresh();
  refreshCharts();
  schedule();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    showMain();
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("filter").addEventListener("input", () => renderQueues(lastQueues));
  $("held-only").addEventListener("change", () => renderQueues(lastQueues));
  $("hours").addEventListener("change", refreshCharts);
  // "#token=..." (e.g. a link printed by admin/quickstart) is taken once
  // and removed from the address bar; the fragment never reaches the server.
  const m = /^#token=(.+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (token()) showMain();
  else showLogin("");
});
