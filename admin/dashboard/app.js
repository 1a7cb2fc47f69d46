// pgmta dashboard: asks for the API token once (kept in sessionStorage for
// this tab only), then polls the HTTP API every 2 s and renders status,
// queues, nodes and jobs. Every value from the API is inserted as text,
// never as markup.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "pgmta.token";
let timer = null;

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

function fmtTime(v) {
  if (!v) return "";
  const d = new Date(v.replace(" ", "T").replace(/([+-]\d\d)$/, "$1:00"));
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
    ["bounced 1h", st.bounced_1h],
  ];
  for (const [k, v] of items) {
    const d = el("div");
    d.append(el("dt", k), el("dd", v));
    dl.append(d);
  }
  $("node").textContent = (st.node || "") + (st.version ? " · pgmta " + st.version : "");
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
      await refresh();
    } catch (e) {
      setState(e.message, false);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function renderQueues(rows) {
  const f = $("filter").value.trim().toLowerCase();
  const tb = $("queues").tBodies[0];
  tb.replaceChildren();
  for (const q of rows) {
    if (f && !q.domain.includes(f)) continue;
    const tr = el("tr");
    if (q.paused) tr.className = "paused";
    tr.append(
      el("td", q.domain), el("td", q.vmta || ""), el("td", q.pipe),
      el("td", q.queued, "n"), el("td", q.ready, "n"), el("td", q.deferred, "n"),
      el("td", q.in_flight, "n"), el("td", fmtTime(q.oldest)),
      el("td", q.paused ? "yes" : "", q.paused ? "yes" : ""),
      el("td", q.backoff ? "yes" : "", q.backoff ? "yes" : ""),
      el("td", q.connections, "n"), el("td", q.last_error || "", "err"));
    const td = el("td");
    td.append(steerButton("queue", { domain: q.domain, vmta: q.vmta }, q.paused));
    tr.append(td);
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
    const td = el("td");
    td.append(steerButton("job", j.job_id, j.paused));
    tr.append(td);
    tb.append(tr);
  }
}

let lastQueues = [];

async function refresh() {
  try {
    const [st, queues, nodes, jobs] = await Promise.all([
      api("/api/status"), api("/api/queues"), api("/api/nodes"), api("/api/jobs"),
    ]);
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
  timer = setInterval(refresh, REFRESH_MS);
}

function showLogin(msg) {
  clearInterval(timer);
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
