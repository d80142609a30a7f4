// A latency chart as inline SVG (no library): average and maximum latency per point, failed
// checks as red marks along the bottom.
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

function clock(unix, long) {
  const iso = new Date(unix * 1000).toISOString();
  return long ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 16);
}

export function latencyChart(points, { width = 760, height = 220, title = "Latency" } = {}) {
  const pad = { l: 64, r: 12, t: 12, b: 34 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-labelledby": "chart-title chart-desc" });
  const withLatency = points.filter((p) => p.avg_latency_s !== null);
  const failures = points.reduce((n, p) => n + p.failures, 0);
  svg.append(
    s("title", { id: "chart-title" }, title),
    s("desc", { id: "chart-desc" }, withLatency.length ? `${points.length} points; average ${fmtMs(withLatency.reduce((a, p) => a + p.avg_latency_s, 0) / withLatency.length)}; ${failures} failed checks` : "no checks in this window"),
  );
  if (!points.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" }, "no data in this window"));
    return svg;
  }
  const t0 = points[0].start;
  const t1 = Math.max(points[points.length - 1].start, t0 + 60);
  const top = Math.max(...points.map((p) => p.max_latency_s ?? p.avg_latency_s ?? 0), 0.001) * 1.1;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => pad.t + hgt - (v / top) * hgt;
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(s("line", { x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v), class: "gridline" }), s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, fmtMs(v)));
  }
  const long = t1 - t0 > 86400;
  svg.append(
    s("text", { x: pad.l, y: height - 8, class: "axis" }, clock(t0, long) + " UTC"),
    s("text", { x: pad.l + w, y: height - 8, "text-anchor": "end", class: "axis" }, clock(t1, long) + " UTC"),
  );
  const line = (key, cls) => {
    const pts = points.filter((p) => p[key] !== null).map((p) => `${x(p.start).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (pts.length === 1) {
      const [cx, cy] = pts[0].split(",");
      svg.append(s("circle", { cx, cy, r: 3, class: cls }));
    } else if (pts.length) svg.append(s("polyline", { points: pts.join(" "), class: cls }));
  };
  line("max_latency_s", "max");
  line("avg_latency_s", "avg");
  for (const p of points) {
    if (p.failures > 0) svg.append(s("rect", { x: x(p.start) - 1.5, y: pad.t + hgt + 2, width: 3, height: 8, class: "fail" }, undefined));
  }
  return svg;
}
