/* The dashboard: the cluster, the jobs, one job live. Reads /api with the token kept in
   sessionStorage; follows events with fetch() (EventSource cannot send a token header). */
"use strict";
const $ = (sel, root) => (root || document).querySelector(sel);
const TOKEN_KEY = "vmigrate-token";
let currentView = null;   // a function that stops the view's timers and streams

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") el.addEventListener("click", v);
    else if (k === "class") el.className = v;
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) { super(body.error || ("HTTP " + status)); this.status = status; this.fix = body.fix || ""; }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = Object.assign({ headers: {} }, options || {});
  init.headers = Object.assign({ Authorization: "Bearer " + token }, init.headers);
  if (init.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(init.json);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  if (r.status === 401) { showLogin("The token was refused: " + ((await r.json()).error || "")); throw new ApiError(401, {}); }
  const body = r.status === 204 ? {} : await r.json();
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

/* Server-Sent Events over fetch, with Last-Event-ID kept across reconnections. */
function follow(path, onEvent, onEnd) {
  let stopped = false, lastId = null, controller = null;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      try {
        const r = await fetch(path, { headers, signal: controller.signal });
        if (r.status === 204) { if (onEnd) onEnd(); return; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            const ev = { id: null, event: "message", data: "" };
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const i = line.indexOf(": ");
              const k = i < 0 ? line : line.slice(0, i), v = i < 0 ? "" : line.slice(i + 2);
              if (k === "id") ev.id = v; else if (k === "event") ev.event = v; else if (k === "data") ev.data += v;
            }
            if (ev.id !== null) lastId = ev.id;
            if (ev.event === "end") { stopped = true; if (onEnd) onEnd(); return; }
            if (ev.data) onEvent(ev.event, JSON.parse(ev.data));
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      if (!stopped) await new Promise(res => setTimeout(res, 2000));
    }
  }
  run();
  return () => { stopped = true; if (controller) controller.abort(); };
}

function showLogin(message) {
  $("#login").hidden = false; $("#view").hidden = true;
  $("#login-error").textContent = message || "";
}

function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }
function fmtDur(s) { return s === null || s === undefined ? "—" : (s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min"); }
function stateSpan(state) { return h("span", { class: "state-" + String(state || "").split(" ")[0] }, state || "—"); }
function errorBox(err) {
  return h("div", { class: "card" }, h("p", { class: "error" }, err.message),
    err.fix ? h("p", { class: "fix" }, "What to do: " + err.fix) : null);
}

/* ---- dialogs: a form, then a dry run's plan, then a confirmation ---- */
function dialog(title, body, okText, onOk) {
  const d = $("#dialog");
  $("#dialog-title").textContent = title;
  const holder = $("#dialog-body"); holder.textContent = ""; holder.appendChild(body);
  $("#dialog-error").textContent = "";
  const ok = $("#dialog-ok");
  ok.textContent = okText; ok.hidden = !onOk; ok.disabled = false;
  ok.onclick = async () => {
    ok.disabled = true; $("#dialog-error").textContent = "";
    try { await onOk(); } catch (e) {
      $("#dialog-error").textContent = e.message + (e.fix ? "\nWhat to do: " + e.fix : "");
      ok.disabled = false;
    }
  };
  $("#dialog-cancel").onclick = () => d.close();
  if (!d.open) d.showModal();
}

function planTable(plan) {
  const moves = (plan && plan.moves) || [];
  const rows = moves.map(m => h("tr", {}, h("td", {}, m.vm), h("td", {}, m.source), h("td", {}, m.destination),
    h("td", {}, m.mode), h("td", {}, fmtDur(m.predicted_s)),
    h("td", {}, m.predicted_downtime_ms === null || m.predicted_downtime_ms === undefined ? "—" : m.predicted_downtime_ms.toFixed(0) + " ms"),
    h("td", {}, m.reason || "")));
  const unplaced = ((plan && plan.unplaced) || []).map(u => h("li", { class: "error" }, `${u.vm}: ${u.reason}`));
  return h("div", { class: "plan", id: "plan" },
    h("table", { id: "plan-table" }, h("thead", {}, h("tr", {}, ["VM", "from", "to", "mode", "predicted", "downtime", "why"].map(t => h("th", {}, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, "no move")))),
    plan && plan.predicted_total_s !== undefined ? h("p", {}, "Predicted total: ", h("b", { id: "plan-total" }, fmtDur(plan.predicted_total_s))) : null,
    unplaced.length ? h("ul", {}, unplaced) : null);
}

function planOf(output) {
  for (const ev of output || []) if (ev.event === "plan" || ev.moves) return ev;
  for (const ev of output || []) if (ev.plan) return ev.plan;
  return null;
}

async function fleetAction(kind, body, title) {
  dialog(title, h("p", { class: "muted", id: "dry-run-wait" }, "Running the dry run (nothing moves)…"), "Carry it out", null);
  let result;
  try { result = await api("/api/actions/" + kind, { json: Object.assign({}, body, { dry_run: true }) }); }
  catch (e) { dialog(title, errorBox(e), "", null); return; }
  const plan = planOf(result.output);
  const content = h("div", {}, h("p", {}, "Dry run: this is the plan. Nothing has moved yet."),
    plan ? planTable(plan) : h("pre", { class: "events" }, JSON.stringify(result.output, null, 1)),
    result.error ? h("p", { class: "error" }, result.error) : null);
  dialog(title, content, "Carry it out", async () => {
    const started = await api("/api/actions/" + kind, { json: body });
    $("#dialog").close();
    if (started.job_id) location.hash = "#/job/" + started.job_id;
  });
}

function moveDialog(vm, host, hosts) {
  const to = h("select", { id: "move-to" }, hosts.filter(x => x.name !== host && x.reachable).map(x => h("option", { value: x.name }, x.name)));
  const mode = h("select", { id: "move-mode" }, h("option", { value: "live" }, "live"), h("option", { value: "cold" }, "cold"));
  const form = h("div", { class: "form-grid" }, h("label", {}, "VM"), h("b", {}, vm), h("label", {}, "from"), h("span", {}, host),
    h("label", { for: "move-to" }, "to"), to, h("label", { for: "move-mode" }, "mode"), mode);
  dialog("Move " + vm, form, "Check first", async () => {
    const body = { vm, from: host, to: to.value };
    const checked = await api("/api/actions/check", { json: Object.assign({ mode: mode.value }, body) });
    const report = (checked.output || []).find(e => e.findings) || {};
    const notable = (report.findings || []).filter(f => f.verdict === "warn" || f.verdict === "fail");
    const summary = h("div", { id: "check-summary" },
      h("p", {}, report.ok === false ? "The checks fail: the move would be refused." : "The checks pass.",
        notable.length ? ` ${notable.length} to read:` : ""),
      h("ul", {}, notable.map(f => h("li", { class: f.verdict === "fail" ? "error" : "" },
        `${f.verdict}: ${f.check}: ${f.summary}` + (f.fix ? ` — ${f.fix}` : "")))),
      checked.error ? h("p", { class: "error" }, checked.error) : null);
    const start = report.ok === false ? null : async () => {
      const started = await api("/api/actions/" + mode.value, { json: body });
      $("#dialog").close();
      if (started.job_id) location.hash = "#/job/" + started.job_id;
    };
    dialog(`Move ${vm} ${host} → ${to.value} (${mode.value})`, summary, "Start the move", start);
  });
}

/* ---- cluster view ---- */
async function clusterView(root) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  let timer = null;
  async function render() {
    let inv;
    try { inv = await api("/api/inventory"); } catch (e) { root.textContent = ""; root.appendChild(errorBox(e)); return; }
    const cluster = params.get("cluster") || "";
    const hosts = cluster && inv.clusters[cluster] ? inv.hosts.filter(x => inv.clusters[cluster].includes(x.name)) : inv.hosts;
    root.textContent = "";
    const picker = h("select", { id: "cluster-picker" }, h("option", { value: "" }, "all hosts"),
      Object.keys(inv.clusters).map(c => h("option", { value: c, selected: c === cluster }, c)));
    picker.onchange = () => { location.hash = "#/cluster" + (picker.value ? "?cluster=" + picker.value : ""); };
    const balanceButton = h("button", { id: "balance", onclick: () => fleetAction("balance", cluster ? { cluster } : {}, "Balance " + (cluster || "the cluster")) }, "Balance…");
    root.appendChild(h("div", { class: "toolbar" }, h("h1", {}, "Cluster"), picker, balanceButton,
      h("span", { class: "muted" }, `host facts read ${Math.round(Date.now() / 1000 - inv.taken)} s ago`)));
    const cards = hosts.map(host => {
      const leases = Array.isArray(host.leases) ? host.leases : [];
      const leased = new Set(leases.map(l => l.vm));
      const cap = host.capacity_mib || 0;
      const pct = v => cap ? Math.max(0, Math.min(100, 100 * v / cap)) + "%" : "0";
      const card = h("div", { class: "host" + (host.maintenance ? " maint" : "") + (host.reachable ? "" : " down"), "data-host": host.name },
        h("div", { class: "host-head" }, h("span", { class: "host-name" }, host.name),
          h("span", {}, host.cluster ? h("span", { class: "badge" }, host.cluster) : null, " ",
            host.maintenance ? h("span", { class: "badge maint" }, "maintenance: " + host.maintenance) : null,
            host.reachable ? null : h("span", { class: "badge down" }, "down"))),
        host.reachable ? h("div", {},
          h("div", { class: "bar", title: `used ${host.used_mib} MiB, reserve ${host.reserve_mib} MiB, free ${host.free_mib} MiB of ${cap} MiB` },
            h("span", { class: "used", style: "width:" + pct(host.used_mib) }),
            h("span", { class: "reserve", style: "width:" + pct(host.reserve_mib) })),
          h("div", { class: "muted" }, [`${host.used_mib} / ${cap} MiB used, ${host.free_mib} MiB free`, `vCPUs ${host.vcpus_used}${host.vcpus ? "/" + host.vcpus : ""}`, host.cpu_model].filter(Boolean).join(" · ")),
          h("div", { class: "vms" }, (host.vms || []).map(vm => h("span", {
            class: "vm " + (vm.state === "running" ? "running" : "") + (leased.has(vm.name) ? " leased" : ""),
            "data-vm": vm.name, title: `${vm.state}, ${vm.memory_mib} MiB, ${vm.vcpus} vCPU` + (leased.has(vm.name) ? " — leased by a running job" : ""),
            onclick: () => moveDialog(vm.name, host.name, inv.hosts)
          }, vm.name, " ", h("span", { class: "muted" }, vm.memory_mib + " MiB")))),
          leases.length ? h("div", {}, leases.map(l => h("span", { class: "badge lease" }, `lease ${l.vm}: job ${l.job} (${l.owner || ""})`))) : null)
          : h("p", { class: "error" }, host.problem || "unreachable"),
        h("div", { class: "host-actions" },
          h("button", { class: "evacuate", onclick: () => fleetAction("evacuate", { host: host.name }, "Evacuate " + host.name) }, "Evacuate…"),
          host.maintenance
            ? h("button", { onclick: () => dialog("End maintenance of " + host.name, h("p", {}, "Plans may send VMs there again."), "End maintenance",
                async () => { await api("/api/actions/maintenance-end", { json: { host: host.name } }); $("#dialog").close(); render(); }) }, "End maintenance")
            : h("button", { onclick: () => dialog("Maintenance of " + host.name, h("p", {}, "No plan will send VMs there until it ends. VMs on it stay."), "Start maintenance",
                async () => { await api("/api/actions/maintenance-start", { json: { host: host.name, reason: "marked from the dashboard" } }); $("#dialog").close(); render(); }) }, "Maintenance")));
      return card;
    });
    root.appendChild(h("div", { class: "hosts", id: "hosts" }, cards));
    const running = await api("/api/jobs?state=running&last=20").catch(() => []);
    if (running.length) {
      root.appendChild(h("h2", {}, "Running"));
      root.appendChild(jobsTable(running));
    }
  }
  await render();
  timer = setInterval(render, 10000);
  return () => clearInterval(timer);
}

/* ---- jobs ---- */
function jobsTable(jobs) {
  return h("table", { id: "jobs-table" },
    h("thead", {}, h("tr", {}, ["job", "kind", "VM / host", "from → to", "state", "started", "took"].map(t => h("th", {}, t)))),
    h("tbody", {}, jobs.map(j => h("tr", { class: "clickable", "data-job": j.id, onclick: () => { location.hash = "#/job/" + j.id; } },
      h("td", {}, j.id), h("td", {}, j.kind), h("td", {}, j.vm), h("td", {}, `${j.source_host || j.source} → ${j.destination_host || j.destination}`),
      h("td", {}, stateSpan(j.state)), h("td", {}, fmtTime(j.started)),
      h("td", {}, j.finished ? fmtDur(j.finished - j.started) : "…")))));
}

async function jobsView(root) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const inputs = {};
  const bar = h("form", { class: "toolbar", id: "job-filters" }, h("h1", {}, "Jobs"),
    ["vm", "host", "state", "kind"].map(k => { inputs[k] = h("input", { name: k, placeholder: k, value: params.get(k) || "", size: 10 }); return inputs[k]; }),
    h("button", { type: "submit" }, "Filter"));
  bar.onsubmit = ev => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) if (el.value) q.set(k, el.value);
    location.hash = "#/jobs?" + q.toString();
  };
  root.appendChild(bar);
  const q = new URLSearchParams();
  for (const k of ["vm", "host", "state", "kind"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("last", "100");
  try { root.appendChild(jobsTable(await api("/api/jobs?" + q.toString()))); }
  catch (e) { root.appendChild(errorBox(e)); }
  return () => {};
}

async function jobView(root, id) {
  let stopStream = null, timer = null, refreshing = false, pending = false;
  const head = h("div", { class: "card", id: "job-head" });
  const chart = h("div", { class: "chart card", id: "chart" });
  const actions = h("div", { class: "card", id: "job-actions" });
  const log = h("div", { class: "events", id: "events" });
  root.append(head, chart, actions, h("h2", {}, "Events (live)"), log);
  async function refresh() {
    if (refreshing) { pending = true; return; }
    refreshing = true;
    try {
      const job = await api("/api/jobs/" + id);
      head.textContent = "";
      const cancel = job.state === "running" && job.kind === "live"
        ? h("button", { class: "danger", id: "cancel", onclick: () => dialog("Cancel job " + id, h("p", {}, "The migration is aborted; the VM stays on the source."), "Cancel the move",
            async () => { await api(`/api/jobs/${id}/cancel`, { method: "POST" }); $("#dialog").close(); refresh(); }) }, "Cancel")
        : null;
      head.append(h("div", { class: "toolbar" }, h("h1", {}, `Job ${job.id}: ${job.kind} ${job.vm}`), h("span", { id: "job-state" }, stateSpan(job.state)), cancel),
        h("dl", { class: "kv" }, h("dt", {}, "from → to"), h("dd", { title: `${job.source} → ${job.destination}` }, `${job.source_host || job.source} → ${job.destination_host || job.destination}`),
          h("dt", {}, "started"), h("dd", {}, fmtTime(job.started)),
          h("dt", {}, "took"), h("dd", {}, job.finished ? fmtDur(job.finished - job.started) : "running " + fmtDur(Date.now() / 1000 - job.started)),
          h("dt", {}, "predicted"), h("dd", {}, fmtDur(job.predicted_s || (job.params && job.params.plan && job.params.plan.predicted_total_s))),
          h("dt", {}, "outcome"), h("dd", {}, job.outcome || "—"),
          job.report && job.report.message ? [h("dt", {}, "message"), h("dd", {}, job.report.message)] : null));
      if (job.moves) {
        drawTimeline(chart, job.moves, (job.finished || Date.now() / 1000) - job.started);
        chart.prepend(h("div", { class: "legend" }, h("span", {}, h("i", { style: "border-top:2px dashed #7b5ea7" }), "predicted"), h("span", {}, h("i", { style: "background:#6f9ad8;height:8px" }), "actual")));
      } else if (job.kind === "live" || (job.samples && job.samples.length)) {
        drawLiveChart(chart, job);
        chart.prepend(h("div", { class: "legend" },
          h("span", {}, h("i", { style: "background:#1f5fbf" }), "remaining"),
          h("span", {}, h("i", { style: "background:#c62828" }), "dirty rate"),
          h("span", {}, h("i", { style: "background:#2e7d32" }), "bandwidth"),
          h("span", {}, h("i", { style: "background:#b26a00" }), "policy action"),
          h("span", {}, h("i", { style: "border-top:2px dashed #7b5ea7" }), "predicted end")));
      } else {
        chart.textContent = "";
        chart.appendChild(h("p", { class: "muted" }, "No chart for this job kind."));
      }
      actions.textContent = "";
      actions.append(h("h2", {}, "Policy and user actions"),
        (job.actions || []).length ? h("ul", { id: "action-list" }, job.actions.map(a => h("li", {}, `${(a.t - job.started).toFixed(1)} s ${a.actor}: ${a.action} — ${a.reason}`)))
          : h("p", { class: "muted" }, "none"));
      if (job.state !== "running" && timer) { clearInterval(timer); timer = null; }
    } catch (e) { head.textContent = ""; head.appendChild(errorBox(e)); }
    refreshing = false;
    if (pending) { pending = false; refresh(); }
  }
  await refresh();
  timer = setInterval(refresh, 2000);
  stopStream = follow(`/api/jobs/${id}/events`, (kind, ev) => {
    const line = `#${ev.seq} ${new Date(ev.t * 1000).toLocaleTimeString()} ${kind} ` + JSON.stringify(ev.event).slice(0, 200);
    log.appendChild(h("div", { "data-seq": ev.seq }, line));
    log.scrollTop = log.scrollHeight;
    if (kind !== "sample") refresh();
  }, () => { log.appendChild(h("div", { class: "muted", id: "stream-end" }, "— end of the job's events —")); refresh(); });
  return () => { if (stopStream) stopStream(); if (timer) clearInterval(timer); };
}

/* ---- routing ---- */
async function route() {
  if (currentView) { currentView(); currentView = null; }
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
  $("#login").hidden = true; $("#view").hidden = false; $("#logout").hidden = false;
  const root = $("#view"); root.textContent = "";
  const hash = location.hash || "#/cluster";
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  const job = hash.match(/^#\/job\/(\d+)/);
  if (job) currentView = await jobView(root, job[1]);
  else if (hash.startsWith("#/jobs")) currentView = await jobsView(root);
  else currentView = await clusterView(root);
}

$("#login-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  try { await api("/api/health"); await api("/api/clusters"); route(); } catch (e) { if (e.status !== 401) showLogin(e.message); }
});
$("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.hash = "#/cluster"; route(); });
window.addEventListener("hashchange", route);
route();
