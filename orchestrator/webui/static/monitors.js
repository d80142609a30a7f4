// Monitors: state and uptime over 1h/24h/7d/30d; one monitor's heartbeat bar (its last hour,
// a cell per minute) and latency chart over the chosen window.
import { api } from "./api.js";
import { badge, fmtDate, fmtPct, fmtTime, h, message, render, table, update } from "./dom.js";
import { latencyChart } from "./chart.js";
import { t } from "./i18n.js";

const WINDOWS = ["1h", "24h", "7d", "30d"];
const SPAN = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const BEATS = 60; // cells in the heartbeat bar: the last 60 minutes

/** The heartbeat bar's cells, oldest first: one per minute of the last BEATS minutes, "up"
 * (every check passed), "down" (a check failed), "maintenance", or "none" (no check). */
export function beats(points, now = Date.now() / 1000) {
  const byStart = new Map(points.map((p) => [p.start, p]));
  const last = Math.floor(now / 60) * 60;
  const cells = [];
  for (let start = last - (BEATS - 1) * 60; start <= last; start += 60) {
    const p = byStart.get(start);
    const state = !p || p.checks === 0 ? "none" : p.failures > 0 ? "down" : p.maintenance >= p.checks ? "maintenance" : "up";
    cells.push({ start, state, checks: p?.checks ?? 0, failures: p?.failures ?? 0 });
  }
  return cells;
}

function heartbeat(points) {
  return h(
    "ol",
    { class: "beats", id: "heartbeat", "aria-label": t("Recent checks") },
    beats(points).map((c) =>
      h("li", { class: c.state, dataset: { state: c.state }, title: `${fmtDate(new Date(c.start * 1000), "clock")} — ${c.state}: ${c.checks} checks, ${c.failures} failed` }),
    ),
  );
}

function monitorRows(monitors) {
  return monitors.map((m) =>
    h(
      "tr",
      { dataset: { monitor: m.id, status: m.status } },
      h("td", null, badge(m.status)),
      h("th", { scope: "row" }, h("a", { href: "#/monitors/" + encodeURIComponent(m.id) }, m.id)),
      h("td", null, m.kind),
      h("td", null, m.host),
      h("td", { class: "target" }, m.target),
      h("td", null, m.reason),
      WINDOWS.map((w) => h("td", { class: "num" }, fmtPct(m.uptime?.[w]))),
    ),
  );
}

function statusCounts(monitors) {
  const counts = {};
  for (const m of monitors) counts[m.status] = (counts[m.status] || 0) + 1;
  return Object.entries(counts).map(([st, n]) => [badge(st, `${n} ${st}`), " "]);
}

export async function monitorsPage(view, ctx) {
  const monitors = await api("/api/v1/monitors");
  if (!ctx.alive) return;
  const body = h("tbody");
  const summary = h("p", { class: "summary" });
  const filter = h("input", { type: "search", id: "mon-filter", placeholder: t("tenant, kind, status") });
  const applyFilter = () => {
    const q = filter.value.trim().toLowerCase();
    for (const tr of body.rows) tr.hidden = Boolean(q) && !tr.textContent.toLowerCase().includes(q);
  };
  // Only the counts and the rows are refreshed; the filter is the user's and is applied again.
  const show = (list) => {
    update(summary, statusCounts(list));
    update(body, monitorRows(list));
    applyFilter();
  };
  filter.addEventListener("input", applyFilter);
  show(monitors);
  render(view, 
    h("h1", null, t("Monitors")),
    summary,
    h("div", { class: "toolbar" }, h("label", { for: "mon-filter" }, `${t("Filter")} `), filter),
    h(
      "table",
      { id: "monitors", class: "grid" },
      h("thead", null, h("tr", null, [...["status", "monitor", "kind", "host", "target", "reason"].map((c) => t(c)), ...WINDOWS.map((window) => t("uptime {window}", { window }))].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  ctx.every(15000, async () => {
    const list = await api("/api/v1/monitors");
    if (ctx.alive) show(list);
  });
}

export async function monitorPage(view, ctx, id) {
  const window = WINDOWS.includes(ctx.params.get("window")) ? ctx.params.get("window") : "24h";
  const path = "/api/v1/monitors/" + id.split("/").map(encodeURIComponent).join("/");
  const [hist, recent, all] = await Promise.all([
    api(`${path}/history?window=${window}`),
    window === "1h" ? null : api(`${path}/history?window=1h`),
    api("/api/v1/monitors"),
  ]);
  if (!ctx.alive) return;
  const m = all.find((x) => x.id === id);
  const href = (w) => "#/monitors/" + encodeURIComponent(id) + "?window=" + w;
  // no input on this page: the refresh redraws it, keeping open details and the scroll
  update(view, 
    h("h1", null, t("Monitor"), " ", h("span", null, id)),
    m
      ? h(
          "dl",
          { class: "meta" },
          h("dt", null, t("status")),
          h("dd", null, badge(m.status), " ", m.reason),
          h("dt", null, t("kind / host")),
          h("dd", null, `${m.kind} · ${m.host}`),
          h("dt", null, t("target")),
          h("dd", null, m.target),
          h("dt", null, t("changed")),
          h("dd", null, fmtTime(m.changed_at)),
          h("dt", null, t("tenant")),
          h("dd", null, m.tenant),
        )
      : message("info", t("This monitor is not in the current list.")),
    h("h2", null, t("Recent checks")),
    heartbeat((recent ?? hist).points),
    table([t("window"), ...WINDOWS], [h("tr", null, h("th", { scope: "row" }, t("uptime")), WINDOWS.map((w) => h("td", null, fmtPct(m?.uptime?.[w]))))], { class: "grid uptime" }),
    h("nav", { class: "tabs", "aria-label": "History window" }, WINDOWS.map((w) => h("a", { href: href(w), "aria-current": w === window ? "page" : null }, w))),
    h("h2", null, `Latency, last ${window} (uptime ${fmtPct(hist.uptime)})`),
    latencyChart(hist.points, { title: `Latency of ${id}, last ${window}`, span: SPAN[window], step: SPAN[window] > 86400 ? 3600 : 60 }),
    h("p", { class: "legend" }, h("span", { class: "key avg" }, t("average")), " ", h("span", { class: "key max" }, t("maximum")), " ", h("span", { class: "key down" }, t("DOWN (failed checks)"))),
  );
  ctx.later(() => monitorPage(view, ctx, id), 30000);
}
