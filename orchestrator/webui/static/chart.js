// A latency chart as inline SVG (no library). The x axis spans the chosen window (ending now),
// not just the data; average and maximum latency per point; a point with failed checks is a
// DOWN band over the whole height and its latency is not drawn (a failed check's duration is
// no latency of a healthy service), so the line breaks there. Times in the user's time zone.
import { fmtDate } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmtMs(seconds) {
  const ms = seconds * 1000;
  return ms >= 100 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(1)} ms`;
}

/** Split points into runs of healthy points (no failed check): each run is one line. */
export function healthyRuns(points) {
  const runs = [];
  let run = [];
  for (const p of points) {
    if (p.failures > 0 || p.avg_latency_s === null) {
      if (run.length) runs.push(run);
      run = [];
    } else run.push(p);
  }
  if (run.length) runs.push(run);
  return runs;
}

export function latencyChart(points, { width = 760, height = 220, title = "Latency", span = 86400, step = 60, now = Date.now() / 1000 } = {}) {
  const pad = { l: 64, r: 12, t: 12, b: 34 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-labelledby": "chart-title chart-desc" });
  const healthy = points.filter((p) => p.failures === 0 && p.avg_latency_s !== null);
  const failed = points.filter((p) => p.failures > 0);
  const failures = failed.reduce((n, p) => n + p.failures, 0);
  svg.append(
    s("title", { id: "chart-title" }, title),
    s("desc", { id: "chart-desc" }, points.length ? `${points.length} points; average ${healthy.length ? fmtMs(healthy.reduce((a, p) => a + p.avg_latency_s, 0) / healthy.length) : "—"}; ${failures} failed checks in ${failed.length} DOWN points` : "no checks in this window"),
  );
  const t1 = Math.ceil(now / step) * step;
  const t0 = t1 - span;
  const x = (t) => pad.l + ((Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0)) * w;
  const long = span > 86400;
  svg.append(
    s("text", { x: pad.l, y: height - 8, class: "axis" }, fmtDate(new Date(t0 * 1000), long ? "day" : "clock")),
    s("text", { x: pad.l + w, y: height - 8, "text-anchor": "end", class: "axis" }, fmtDate(new Date(t1 * 1000), long ? "day" : "clock")),
  );
  if (!points.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" }, "no data in this window"));
    return svg;
  }
  const top = Math.max(...healthy.map((p) => p.max_latency_s ?? p.avg_latency_s ?? 0), 0.001) * 1.1;
  const y = (v) => pad.t + hgt - (v / top) * hgt;
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(s("line", { x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v), class: "gridline" }), s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, fmtMs(v)));
  }
  for (const p of failed) {
    const bx = x(p.start);
    const band = s("rect", { x: bx, y: pad.t, width: Math.max(x(p.start + step) - bx, 2), height: hgt, class: "down" });
    band.append(s("title", {}, `DOWN ${fmtDate(new Date(p.start * 1000))}: ${p.failures} of ${p.checks} checks failed`));
    svg.append(band);
  }
  const line = (run, key, cls) => {
    const pts = run.filter((p) => p[key] !== null).map((p) => `${x(p.start + step / 2).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (pts.length === 1) {
      const [cx, cy] = pts[0].split(",");
      svg.append(s("circle", { cx, cy, r: 3, class: cls }));
    } else if (pts.length) svg.append(s("polyline", { points: pts.join(" "), class: cls }));
  };
  for (const run of healthyRuns(points)) {
    line(run, "max_latency_s", "max");
    line(run, "avg_latency_s", "avg");
  }
  return svg;
}
