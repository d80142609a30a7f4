// Monitors: state and uptime over 1h/24h/7d/30d; one monitor's latency chart.
import { api } from "./api.js";
import { badge, fmtPct, fmtTime, h, message, render, table, update } from "./dom.js";
import { latencyChart } from "./chart.js";

const WINDOWS = ["1h", "24h", "7d", "30d"];

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
  const filter = h("input", { type: "search", id: "mon-filter", placeholder: "tenant, kind, status" });
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
    h("h1", null, "Monitors"),
    summary,
    h("div", { class: "toolbar" }, h("label", { for: "mon-filter" }, "Filter "), filter),
    h(
      "table",
      { id: "monitors", class: "grid" },
      h("thead", null, h("tr", null, ["status", "monitor", "kind", "host", "target", "reason", ...WINDOWS.map((w) => `uptime ${w}`)].map((t) => h("th", { scope: "col" }, t)))),
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
  const [hist, all] = await Promise.all([api(`${path}/history?window=${window}`), api("/api/v1/monitors")]);
  if (!ctx.alive) return;
  const m = all.find((x) => x.id === id);
  const href = (w) => "#/monitors/" + encodeURIComponent(id) + "?window=" + w;
  // no input on this page: the refresh redraws it, keeping open details and the scroll
  update(view, 
    h("h1", null, "Monitor ", h("span", null, id)),
    m
      ? h(
          "dl",
          { class: "meta" },
          h("dt", null, "status"),
          h("dd", null, badge(m.status), " ", m.reason),
          h("dt", null, "kind / host"),
          h("dd", null, `${m.kind} on ${m.host}`),
          h("dt", null, "target"),
          h("dd", null, m.target),
          h("dt", null, "changed"),
          h("dd", null, fmtTime(m.changed_at)),
          h("dt", null, "tenant"),
          h("dd", null, m.tenant),
        )
      : message("info", "This monitor is not in the current list."),
    table(["window", ...WINDOWS], [h("tr", null, h("th", { scope: "row" }, "uptime"), WINDOWS.map((w) => h("td", null, fmtPct(m?.uptime?.[w]))))], { class: "grid uptime" }),
    h("nav", { class: "tabs", "aria-label": "History window" }, WINDOWS.map((w) => h("a", { href: href(w), "aria-current": w === window ? "page" : null }, w))),
    h("h2", null, `Latency, last ${window} (uptime ${fmtPct(hist.uptime)})`),
    latencyChart(hist.points, { title: `Latency of ${id}, last ${window}` }),
    h("p", { class: "legend" }, h("span", { class: "key avg" }, "average"), " ", h("span", { class: "key max" }, "maximum"), " ", h("span", { class: "key fail" }, "failed checks")),
  );
  ctx.later(() => monitorPage(view, ctx, id), 30000);
}
