// Fleet grid: tenant × host × version × status, refreshed every REFRESH_MS (the filter box
// and its text stay; only the data is replaced).
import { api } from "./api.js";
import { badge, fmtPct, h, link, message, render, table } from "./dom.js";
import { t } from "./i18n.js";

const REFRESH_MS = 10000;

const WORST = ["down", "pending", "maintenance", "up"];

function worst(monitors) {
  if (!monitors.length) return null;
  return WORST.find((s) => monitors.some((m) => m.status === s)) ?? monitors[0].status;
}

function minUptime(monitors, window) {
  const values = monitors.map((m) => m.uptime?.[window]).filter((v) => v !== null && v !== undefined);
  return values.length ? Math.min(...values) : null;
}

/** One row per instance; a registered tenant without an instance gets a row too. */
export function fleetRows(tenants, instances, monitors) {
  const bySlug = new Map(tenants.map((t) => [t.slug, t]));
  const monitorsOf = new Map();
  for (const m of monitors) {
    const key = m.tenant;
    if (!monitorsOf.has(key)) monitorsOf.set(key, []);
    monitorsOf.get(key).push(m);
  }
  const rows = [];
  const seen = new Set();
  for (const i of instances) {
    seen.add(i.tenant);
    const mons = (monitorsOf.get(i.tenant) || []).filter((m) => m.host === i.host);
    rows.push({ tenant: bySlug.get(i.tenant), slug: i.tenant, instance: i, monitors: mons });
  }
  for (const t of tenants) {
    if (!seen.has(t.slug)) rows.push({ tenant: t, slug: t.slug, instance: null, monitors: monitorsOf.get(t.slug) || [] });
  }
  rows.sort((a, b) => a.slug.localeCompare(b.slug) || (a.instance?.host ?? "").localeCompare(b.instance?.host ?? ""));
  return rows;
}

function rowOf(r) {
  const i = r.instance;
  const mon = worst(r.monitors);
  const container = i ? [badge(i.status), i.health ? [" ", badge(i.health, i.health)] : null] : badge("missing", t("no instance"));
  // The tenant's host does not answer: the whole row says so (the host incident stands for it).
  const unreachable = r.tenant?.status === "unreachable";
  const hostBadge = unreachable ? [" ", h("span", { class: "badge s-unreachable", title: r.tenant.status_reason ?? "" }, "unreachable")] : null;
  return h(
    "tr",
    { dataset: { tenant: r.slug, host: i?.host ?? "", status: r.tenant?.status ?? "ok" }, class: unreachable ? "unreachable" : null },
    h("th", { scope: "row" }, r.slug, r.tenant && r.tenant.name !== r.slug ? h("div", { class: "muted" }, r.tenant.name) : null),
    h("td", null, r.tenant?.ring ?? "—"),
    h("td", null, i?.host ?? r.tenant?.host_name ?? "—", hostBadge),
    h("td", null, i ? `${i.component} · ${i.name}` : "—"),
    h("td", { class: "version" }, i?.version ?? "—"),
    h("td", null, container, i?.rollout ? [" ", link(`rollout ${i.rollout}`, "rollouts", i.rollout)] : null),
    h("td", null, mon ? [badge(mon), ` ${r.monitors.length}`] : "—"),
    h("td", { class: "num" }, fmtPct(minUptime(r.monitors, "24h"))),
  );
}

/** The hosts to list: the registry's, and those named only by instances or tenants (the
 * implicit `local` engine is in no fleet file but runs tenants all the same). */
export function hostRows(hosts, instances, tenants) {
  const rows = [...hosts];
  const known = new Set(hosts.map((x) => x.name));
  const named = [...instances.map((i) => i.host), ...tenants.map((x) => x.host_name)].filter(Boolean);
  for (const name of named) {
    if (known.has(name)) continue;
    known.add(name);
    rows.push({ name, url: null, status: null, tls: false });
  }
  return rows;
}

async function load() {
  const [tenants, instances, hosts, monitors] = await Promise.all([
    api("/api/v1/tenants"),
    api("/api/v1/instances"),
    api("/api/v1/hosts"),
    api("/api/v1/monitors"),
  ]);
  return { tenants, instances, hosts: hostRows(hosts, instances.instances, tenants), monitors };
}

function hostsTable(hosts, instances) {
  const perHost = new Map();
  for (const i of instances) perHost.set(i.host, (perHost.get(i.host) || 0) + 1);
  return table(
    ["host", "engine", "status", "instances", "TLS"].map(t),
    hosts.map((x) =>
      h(
        "tr",
        { dataset: { host: x.name, status: x.status ?? "ok" } },
        h("th", { scope: "row" }, x.name),
        h("td", null, x.url ?? "—"),
        h("td", null, h("span", { class: `badge s-${x.status === "unreachable" ? "unreachable" : "ok"}`, title: x.status_reason ?? "" }, x.status ?? "ok")),
        h("td", { class: "num" }, perHost.get(x.name) || 0),
        h("td", null, x.tls ? "yes" : "no"),
      ),
    ),
    { id: "fleet-hosts" },
  );
}

export async function fleetPage(view, ctx) {
  const first = await load();
  if (!ctx.alive) return;
  const body = h("tbody");
  const summary = h("p", { class: "summary", id: "fleet-summary" });
  const problems = h("div", { id: "fleet-errors" });
  const hostsBox = h("details", { class: "hosts" }, h("summary", null, t("Hosts")));
  const filter = h("input", { type: "search", id: "fleet-filter", placeholder: "tenant, host, version, status" });
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const applyFilter = () => {
    const q = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const tr of body.rows) {
      const hit = !q || tr.textContent.toLowerCase().includes(q);
      tr.hidden = !hit;
      if (hit) shown += 1;
    }
    count.textContent = q ? `${shown} ${t("of")} ${body.rows.length} ${t("rows")}` : `${body.rows.length} ${t("rows")}`;
  };
  filter.addEventListener("input", applyFilter);
  const show = ({ tenants, instances, hosts, monitors }) => {
    const rows = fleetRows(tenants, instances.instances, monitors);
    render(body, rows.map(rowOf));
    const down = monitors.filter((m) => m.status === "down").length;
    render(
      summary,
      `${tenants.length} ${t("tenants")} · ${instances.instances.length} ${t("instances")} · ${hosts.length} ${t("hosts")} · ${monitors.length} ${t("monitors")}, `,
      badge(down ? "down" : "up", `${down} ${t("down")}`),
    );
    render(problems, Object.entries(instances.errors || {}).map(([host, reason]) => message("error", `host ${host}: ${reason}`)));
    hostsBox.querySelector("table")?.remove();
    hostsBox.append(hostsTable(hosts, instances.instances));
    applyFilter();
    document.body.dataset.fleetRendered = String(rows.length);
  };
  show(first);
  render(view, 
    h("h1", null, t("Fleet")),
    summary,
    problems,
    hostsBox,
    h("div", { class: "toolbar" }, h("label", { for: "fleet-filter" }, `${t("Filter")} `), filter, " ", count),
    h(
      "table",
      { id: "fleet-grid", class: "grid" },
      h("caption", { class: "sr-only" }, "Tenants by host, version and status"),
      h("thead", null, h("tr", null, ["tenant", "ring", "host", "container", "version", "state", "monitors", "uptime 24h"].map((x, i) => h("th", { scope: "col", class: i === 7 ? "num" : null }, t(x))))),
      body,
    ),
  );
  performance.mark("cpdops:fleet-rendered");
  const refresh = async () => {
    try {
      const data = await load();
      if (ctx.alive) show(data);
    } catch (err) {
      if (ctx.alive) render(problems, message("error", err.message));
    }
    ctx.later(refresh, REFRESH_MS);
  };
  ctx.later(refresh, REFRESH_MS);
}
