/* Charts in plain SVG: a live migration's remaining memory and rates over time, and a fleet
   job's moves as a timeline, predicted against actual. No library, no build step. */
"use strict";
const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const MIB = 1048576;

function axes(svg, box, xMax, yMax, yLabel, xLabel) {
  const { x0, y0, w, h } = box;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + h - (h * i) / 4;
    svg.appendChild(svgEl("line", { x1: x0, x2: x0 + w, y1: y, y2: y, class: "grid" }));
    svg.appendChild(svgEl("text", { x: x0 - 6, y: y + 4, "text-anchor": "end" },
      (yMax * i / 4).toFixed(yMax >= 40 ? 0 : 1)));
  }
  for (let i = 0; i <= 5; i++) {
    const x = x0 + (w * i) / 5;
    svg.appendChild(svgEl("text", { x, y: y0 + h + 14, "text-anchor": "middle" },
      (xMax * i / 5).toFixed(xMax >= 20 ? 0 : 1)));
  }
  svg.appendChild(svgEl("line", { x1: x0, x2: x0, y1: y0, y2: y0 + h, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: x0, x2: x0 + w, y1: y0 + h, y2: y0 + h, class: "axis" }));
  svg.appendChild(svgEl("text", { x: x0, y: y0 - 6 }, yLabel));
  if (xLabel) svg.appendChild(svgEl("text", { x: x0 + w, y: y0 + h + 28, "text-anchor": "end" }, xLabel));
}

function pathOf(points) {
  return points.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
}

/* job: {started, finished, samples:[{t, elapsed_s, memory_remaining, dirty_rate_bps,
   bandwidth_bps, iteration, phase}], actions:[{t, action, reason, actor}], predicted_s} */
function drawLiveChart(container, job) {
  container.textContent = "";
  const samples = job.samples || [];
  const W = 900, H = 430;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "remaining memory and rates over time", "data-samples": samples.length });
  const t0 = job.started;
  const times = samples.map(s => s.t - t0);
  const end = job.finished ? job.finished - t0 : (times.length ? times[times.length - 1] : 1);
  const xMax = niceMax(Math.max(end, job.predicted_s || 0, 1));
  const top = { x0: 60, y0: 24, w: W - 90, h: 170 };
  const bottom = { x0: 60, y0: 236, w: W - 90, h: 150 };
  const remMax = niceMax(Math.max(MIB, ...samples.map(s => (s.memory_remaining || 0) + (s.disk_remaining || 0))) / MIB);
  const rateMax = niceMax(Math.max(MIB, ...samples.map(s => Math.max(s.dirty_rate_bps || 0,
    (s.bandwidth_bps || 0) + (s.disk_bandwidth_bps || 0)))) / MIB);
  axes(svg, top, xMax, remMax, "remaining (MiB)");
  axes(svg, bottom, xMax, rateMax, "MiB/s: dirty rate (red) vs bandwidth (green)", "seconds since start");
  const X = (box, t) => box.x0 + (box.w * t) / xMax;
  const Y = (box, v, max) => box.y0 + box.h - (box.h * Math.min(v, max)) / max;
  // pass boundaries: where the iteration number changes
  let pass = null, lastLabel = -Infinity;
  samples.forEach((s, i) => {
    if (s.iteration !== pass && pass !== null) {
      for (const box of [top, bottom]) {
        svg.appendChild(svgEl("line", { x1: X(box, times[i]), x2: X(box, times[i]), y1: box.y0,
          y2: box.y0 + box.h, class: "pass" }));
      }
      const x = X(top, times[i]);
      if (x - lastLabel > 44) {  // passes that follow closely share one label
        svg.appendChild(svgEl("text", { x: x + 2, y: top.y0 + 10 }, "pass " + s.iteration));
        lastLabel = x;
      }
    }
    pass = s.iteration;
  });
  const remaining = samples.map((s, i) => [X(top, times[i]),
    Y(top, ((s.memory_remaining || 0) + (s.disk_remaining || 0)) / MIB, remMax)]);
  if (remaining.length) svg.appendChild(svgEl("path", { d: pathOf(remaining), class: "remaining" }));
  const dirty = samples.map((s, i) => [X(bottom, times[i]), Y(bottom, (s.dirty_rate_bps || 0) / MIB, rateMax)]);
  const bw = samples.map((s, i) => [X(bottom, times[i]),
    Y(bottom, ((s.bandwidth_bps || 0) + (s.disk_bandwidth_bps || 0)) / MIB, rateMax)]);
  if (dirty.length) svg.appendChild(svgEl("path", { d: pathOf(dirty), class: "dirty" }));
  if (bw.length) svg.appendChild(svgEl("path", { d: pathOf(bw), class: "bandwidth" }));
  // the policy's actions, each a marker with its reason as a tooltip
  (job.actions || []).forEach((a, i) => {
    const x = X(top, a.t - t0);
    const g = svgEl("g", { class: "policy-action" });
    g.appendChild(svgEl("line", { x1: x, x2: x, y1: top.y0, y2: bottom.y0 + bottom.h, class: "policy" }));
    g.appendChild(svgEl("circle", { cx: x, cy: top.y0 + 4 + (i % 3) * 10, r: 4, fill: "#b26a00" }));
    g.appendChild(svgEl("title", {}, `${(a.t - t0).toFixed(1)} s ${a.actor}: ${a.action} — ${a.reason}`));
    svg.appendChild(g);
  });
  if (job.predicted_s) {
    const x = X(top, job.predicted_s);
    svg.appendChild(svgEl("line", { x1: x, x2: x, y1: top.y0, y2: bottom.y0 + bottom.h, class: "predicted" }));
    svg.appendChild(svgEl("text", { x: x + 3, y: bottom.y0 + bottom.h - 4 }, "predicted end"));
  }
  if (job.finished) {
    const x = X(top, end);
    svg.appendChild(svgEl("line", { x1: x, x2: x, y1: top.y0, y2: bottom.y0 + bottom.h, class: "actual" }));
    svg.appendChild(svgEl("text", { x: x + 3, y: top.y0 + top.h - 4 }, `actual end ${end.toFixed(1)} s`));
  }
  container.appendChild(svg);
}

/* moves: [{vm, destination, predicted_start_s, predicted_s, started_s, finished_s, state}] */
function drawTimeline(container, moves, elapsed) {
  container.textContent = "";
  const rowH = 26, W = 900;
  const H = 50 + rowH * Math.max(1, moves.length);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "moves, predicted against actual" });
  const ends = moves.flatMap(m => [(m.predicted_start_s || 0) + (m.predicted_s || 0), m.finished_s || 0, m.started_s || 0]);
  const xMax = niceMax(Math.max(1, elapsed || 0, ...ends));
  const box = { x0: 170, y0: 20, w: W - 200, h: rowH * Math.max(1, moves.length) };
  const X = t => box.x0 + (box.w * t) / xMax;
  for (let i = 0; i <= 5; i++) {
    const x = box.x0 + (box.w * i) / 5;
    svg.appendChild(svgEl("line", { x1: x, x2: x, y1: box.y0, y2: box.y0 + box.h, class: "grid" }));
    svg.appendChild(svgEl("text", { x, y: box.y0 + box.h + 14, "text-anchor": "middle" }, (xMax * i / 5).toFixed(0) + " s"));
  }
  moves.forEach((m, i) => {
    const y = box.y0 + i * rowH;
    svg.appendChild(svgEl("text", { x: box.x0 - 6, y: y + 16, "text-anchor": "end" },
      `${m.vm} → ${m.destination || "?"}`));
    if (m.predicted_s) {
      const r = svgEl("rect", { x: X(m.predicted_start_s || 0), y: y + 3, width: Math.max(2, X(m.predicted_s) - box.x0),
        height: rowH - 6, class: "predicted-bar" });
      r.appendChild(svgEl("title", {}, `predicted ${m.predicted_s.toFixed(1)} s`));
      svg.appendChild(r);
    }
    if (m.started_s !== null && m.started_s !== undefined) {
      const stop = m.finished_s !== null && m.finished_s !== undefined ? m.finished_s : (elapsed || m.started_s);
      const cls = "actual-bar " + (m.state === "running" ? "running" : (m.state === "completed" ? "" : "failed"));
      const r = svgEl("rect", { x: X(m.started_s), y: y + 8, width: Math.max(2, X(stop) - X(m.started_s)),
        height: rowH - 16, class: cls.trim() });
      r.appendChild(svgEl("title", {}, `actual ${(stop - m.started_s).toFixed(1)} s (${m.state || "?"}), job ${m.job_id}`));
      svg.appendChild(r);
    }
  });
  container.appendChild(svg);
}
