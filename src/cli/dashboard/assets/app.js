// rollgate dashboard: renders the view the server sends over server-sent events. Everything from
// the journal is set as text (never as HTML). No external resource is loaded.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const palette = ["#a7d8ff", "#b9f0c4", "#ffd59e", "#e2c6ff", "#ffc2c2", "#c8f0ee", "#f5e6a8", "#d9d9f3"];
let source = null;
let current = null;
let last = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function colour(version) {
  if (!version) return "#e5e7eb";
  let h = 0;
  for (const ch of version) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return palette[h % palette.length];
}

function time(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function duration(a, b) {
  if (!a || !b) return "";
  const s = Math.round((b - a) / 100) / 10;
  return s + " s";
}

async function loadApps() {
  const r = await fetch("/api/apps");
  const { apps } = await r.json();
  const nav = document.getElementById("apps");
  nav.replaceChildren(...apps.map(a => el("a", { href: "#" + encodeURIComponent(a.app), "data-app": a.app, "data-source": a.source,
    title: a.source === "cluster" ? "team state in the cluster (read only)" : "this machine's state dir" }, a.app + (a.source === "cluster" ? " \u2601" : ""))));
  const wanted = decodeURIComponent(location.hash.slice(1));
  const pick = apps.some(a => a.app === wanted) ? wanted : (apps[0] && apps[0].app);
  if (pick) select(pick);
  else document.getElementById("summary").replaceChildren(el("p", { class: "muted" }, "No rollouts in this state dir yet."));
}

function select(app) {
  if (current === app) return;
  current = app;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("selected", a.dataset.app === app);
  if (source) source.close();
  const live = document.getElementById("live");
  live.textContent = "connecting";
  source = new EventSource("/api/apps/" + encodeURIComponent(app) + "/events");
  source.addEventListener("view", e => { live.textContent = "live"; render(JSON.parse(e.data)); });
  source.onerror = () => { live.textContent = "reconnecting"; };
}

function render(payload) {
  last = payload;
  const v = payload.view;
  const r = v.rollout;
  const summary = document.getElementById("summary");
  summary.dataset.state = v.state;
  if (!r) {
    summary.replaceChildren(el("h2", {}, v.app), el("p", { class: "muted" }, "No rollouts yet."));
  } else {
    const actor = r.actor ? r.actor.user + "@" + r.actor.host : "unknown";
    summary.replaceChildren(
      el("h2", {}, v.app, " ", el("span", { id: "state", class: "state state-" + v.state }, v.state)),
      el("p", {}, (r.from ? r.from + " \u2192 " : "") + r.to, " by ", r.strategy, ", started ", time(r.startedMs), " by ", actor,
        payload.running ? el("span", { class: "muted" }, " \u00b7 running: " + payload.running) : ""),
      r.paused ? el("p", { id: "paused" }, "Paused: " + r.paused) : "",
      r.rollback ? el("p", { id: "rollback" }, "Rollback " + r.rollback) : "",
      r.detail ? el("p", { class: "muted" }, r.detail) : "");
  }
  renderActions(v, payload);
  renderSteps(v);
  renderZones(v);
  renderGates(v);
  renderHistory(v);
  document.body.dataset.records = String(v.records);
}

function renderActions(v, payload) {
  const section = document.getElementById("actions");
  section.hidden = !v.rollout;
  const remote = document.getElementById("read-only");
  remote.hidden = !payload.cluster;
  if (payload.cluster) {
    // Team state in the cluster: shown read only; the page says which command acts on it.
    remote.textContent = "Read only: this app's team state is in namespace " + payload.cluster.namespace
      + ". Act from a terminal, e.g. " + payload.cluster.promote;
    for (const b of document.querySelectorAll("#actions button")) { b.hidden = true; b.disabled = true; }
    document.getElementById("action-status").textContent = "";
    return;
  }
  const unfinished = v.rollout && !v.rollout.outcome;
  const busy = payload.action && payload.action.state === "running";
  const enable = {
    promote: v.state === "paused",
    pause: v.state === "inProgress" && !!payload.running,
    resume: unfinished && v.state !== "paused" && !payload.running,
    abort: unfinished,
    rollback: !!v.rollout && !!v.rollout.outcome,
  };
  for (const [action, on] of Object.entries(enable)) {
    const b = document.getElementById("act-" + action);
    b.disabled = busy || !on;
    b.hidden = !on;
  }
  const status = document.getElementById("action-status");
  const a = payload.action;
  status.textContent = a ? a.action + ": " + a.state + (a.message ? " (" + a.message + ")" : "") : "";
}

function renderSteps(v) {
  document.getElementById("steps").replaceChildren(...v.steps.map(s =>
    el("li", { class: s.state, "data-step": s.index, title: s.note },
      el("div", { class: "kind" }, (s.index + 1) + ". " + s.kind + (s.manual ? " (manual)" : "") + (s.signed ? " \u270e" : "")),
      el("div", { class: "muted" }, s.state + (s.millis != null ? " \u00b7 " + (s.millis / 1000).toFixed(1) + " s" : "")),
      s.manual && (s.approvalsNeeded > 1 || s.approvedBy.length)
        ? el("div", { class: "approvals" }, "approved " + s.approvedBy.length + " of " + Math.max(s.approvalsNeeded, 1) + (s.approvedBy.length ? ": " + s.approvedBy.join(", ") : ""))
        : "")));
}

function renderZones(v) {
  const total = v.zones.reduce((n, z) => n + z.instances.length, 0);
  const zones = document.getElementById("zones");
  zones.classList.toggle("many", total > 120);
  const versions = new Set();
  zones.replaceChildren(...v.zones.map(z => el("div", { class: "zone", "data-zone": z.zone, "data-kind": z.kind },
    el("h3", {}, z.kind === "zone" ? "zone " + z.zone + " (" + z.instances.length + ")"
      : (z.kind === "stable" ? "stable ReplicaSet of " : "ReplicaSet ") + z.zone + (z.version ? " (" + z.version + ")" : "")
        + " \u00b7 " + z.instances.length + " pod" + (z.instances.length === 1 ? "" : "s")),
    el("div", { class: "grid" }, z.instances.map(i => {
      versions.add(i.version);
      const label = i.state === "switching" ? (i.version || "?") + "\u2192" + i.target : (i.version || "?");
      const box = el("div", { class: "inst " + i.state, "data-instance": i.name, "data-version": i.version || "", "data-state": i.state,
        title: i.name + ": " + label + " " + i.state + (i.detail ? " (" + i.detail + ")" : "") },
        el("div", {}, i.name), el("div", { class: "v" }, label));
      box.style.background = colour(i.version);
      return box;
    })))));
  const legend = el("div", { class: "legend" }, [...versions].map(ver => {
    const s = el("span", {}, ver || "unknown");
    s.style.background = colour(ver);
    return s;
  }), " dashed: switching, red border: failed");
  zones.append(legend);
}

function renderGates(v) {
  document.querySelector("#gates tbody").replaceChildren(...v.gates.flatMap(g => {
    const row = el("tr", { class: "gate" }, el("td", {}, g.step + 1), el("td", {}, g.check),
      el("td", { class: g.passed ? "passed" : "failed" }, g.passed ? "passed" : "FAILED"),
      el("td", {}, g.detail), el("td", {}, time(g.atMs)));
    if (!g.measurements || !g.measurements.length) return [row];
    return [row, el("tr", { class: "chart-row" }, el("td", {}), el("td", { colspan: 4 }, chart(g)))];
  }));
}

// A metric check's measurements as an inline SVG: one dot a measurement (red when it failed), a
// line through them, and the success condition as a dashed line when it compares the value with a
// number.
function chart(g) {
  const W = 360, H = 110, L = 44, R = 8, T = 8, B = 18;
  const svg = (tag, attrs, ...children) => {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  };
  const pts = g.measurements.filter(m => typeof m.value === "number");
  const ys = pts.map(m => m.value).concat(g.threshold ? [g.threshold[1]] : []);
  let lo = Math.min(...ys, 0), hi = Math.max(...ys);
  if (!(hi > lo)) hi = lo + 1;
  const pad = (hi - lo) * 0.1;
  lo -= lo < 0 ? pad : 0; hi += pad;
  const t0 = g.measurements[0].atMs, t1 = g.measurements[g.measurements.length - 1].atMs;
  const x = t => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - L - R);
  const y = val => T + (1 - (val - lo) / (hi - lo)) * (H - T - B);
  const fmt = n => Math.abs(n) >= 1000 || (n !== 0 && Math.abs(n) < 0.01) ? n.toExponential(1) : String(+n.toFixed(3));
  const parts = [
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("text", { x: L - 4, y: T + 8, class: "tick", "text-anchor": "end" }, fmt(hi)),
    svg("text", { x: L - 4, y: H - B, class: "tick", "text-anchor": "end" }, fmt(lo)),
    svg("text", { x: W - R, y: H - 4, class: "tick", "text-anchor": "end" }, ((t1 - t0) / 1000).toFixed(1) + " s"),
  ];
  if (g.threshold) {
    const [op, val] = g.threshold;
    parts.push(svg("line", { x1: L, y1: y(val), x2: W - R, y2: y(val), class: "threshold", "data-op": op, "data-value": val },
      svg("title", {}, "success: " + (g.condition || op + " " + val))));
    parts.push(svg("text", { x: W - R - 2, y: y(val) - 3, class: "tick threshold-label", "text-anchor": "end" }, op + " " + fmt(val)));
  }
  if (pts.length > 1) parts.push(svg("polyline", { class: "series", points: pts.map(m => x(m.atMs) + "," + y(m.value)).join(" ") }));
  for (const m of pts) {
    parts.push(svg("circle", { cx: x(m.atMs), cy: y(m.value), r: 3, class: "point " + m.outcome, "data-value": m.value },
      svg("title", {}, time(m.atMs) + ": " + m.value + " (" + m.outcome + ")")));
  }
  return svg("svg", { class: "chart", "data-check": g.check, "data-points": pts.length, "data-measurements": g.measurements.length,
    width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": g.check + " measurements" }, ...parts);
}

function renderHistory(v) {
  document.getElementById("history").replaceChildren(...v.history.slice().reverse().map(r => {
    const state = r.outcome || (r.paused ? "paused" : "inProgress");
    const who = r.actor ? r.actor.user + "@" + r.actor.host : "unknown";
    return el("li", { class: state, "data-rollout": r.id },
      el("strong", {}, (r.from ? r.from + " \u2192 " : "") + r.to), " ", r.strategy, " \u00b7 ", state,
      " \u00b7 started ", time(r.startedMs), " by ", who,
      r.finishedMs ? " \u00b7 took " + duration(r.startedMs, r.finishedMs) : "",
      r.approvals.length ? el("div", { class: "muted" }, "approved: " + r.approvals.map(a => a.actor.user + " (step " + (a.step + 1) + ")").join(", ")) : "",
      r.rollback ? el("div", {}, "rollback " + r.rollback) : "",
      r.detail ? el("div", { class: "muted" }, r.detail) : "");
  }));
}

async function act(action) {
  if (!current || !confirm(action + " " + current + "?")) return;
  const cli = document.getElementById("action-cli");
  cli.hidden = true;
  const r = await fetch("/api/apps/" + encodeURIComponent(current) + "/actions", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ action }),
  });
  const body = await r.json();
  if (!r.ok) {
    document.getElementById("action-status").textContent = action + ": " + body.error;
    if (body.cli) { cli.textContent = body.cli; cli.hidden = false; }
  }
}

for (const b of document.querySelectorAll("#actions button")) b.addEventListener("click", () => act(b.dataset.action));
window.addEventListener("hashchange", () => select(decodeURIComponent(location.hash.slice(1))));
loadApps();
