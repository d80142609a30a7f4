// PostgreSQL health: each postgres monitor's last check (connections, long transactions,
// lock waits, replication, wraparound) and its pg_* series.
import { api } from "./api.js";
import { badge, fmtTime, h, jsonBlock, message, table, update } from "./dom.js";
import { t } from "./i18n.js";

function num(v, unit = "") {
  return v === null || v === undefined ? "—" : `${Number.isInteger(v) ? v : Number(v).toFixed(3)}${unit}`;
}

function bytes(v) {
  if (v === undefined) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Per database: size, sessions, deadlocks, cache hit ratio, wraparound age (from the samples). */
function databases(metrics) {
  const dbs = new Map();
  const of = (name) => {
    if (!dbs.has(name)) dbs.set(name, { sessions: 0 });
    return dbs.get(name);
  };
  for (const s of metrics) {
    const name = s.labels.datname;
    if (!name) continue;
    const d = of(name);
    if (s.name === "pg_stat_activity_count") d.sessions += s.value;
    else if (s.name === "pg_database_size_bytes") d.size = s.value;
    else if (s.name === "pg_stat_database_deadlocks") d.deadlocks = s.value;
    else if (s.name === "pg_stat_database_blks_hit_ratio") d.hit = s.value;
    else if (s.name === "pg_database_wraparound_age") d.age = s.value;
    else if (s.name === "pg_stat_activity_max_tx_duration") d.maxTx = s.value;
  }
  return table(
    ["database", "size", "sessions", "longest tx", "deadlocks", "cache hit", "wraparound age"].map((c) => t(c)),
    [...dbs].map(([name, d]) =>
      h("tr", null, h("th", { scope: "row" }, name), h("td", { class: "num" }, bytes(d.size)), h("td", { class: "num" }, num(d.sessions)), h("td", { class: "num" }, num(d.maxTx, " s")), h("td", { class: "num" }, num(d.deadlocks)), h("td", { class: "num" }, d.hit === undefined ? "—" : `${(d.hit * 100).toFixed(1)} %`), h("td", { class: "num" }, num(d.age))),
    ),
    { class: "grid databases" },
  );
}

function server(p) {
  const d = p.details || {};
  const conns = d.connections ?? null;
  const max = d.max_connections ?? null;
  const oldest = d.oldest_transaction;
  return h(
    "section",
    { class: "card pg", dataset: { monitor: p.monitor } },
    h("h2", null, d.server || p.target, " ", badge(p.status)),
    h(
      "dl",
      { class: "meta" },
      h("dt", null, t("monitor")),
      h("dd", null, h("a", { href: "#/monitors/" + encodeURIComponent(p.monitor) }, p.monitor)),
      h("dt", null, t("last check")),
      h("dd", null, `${fmtTime(p.checked_at)}${p.duration_s !== null ? ` (${(p.duration_s * 1000).toFixed(0)} ms)` : ""} — `, p.reason),
      h("dt", null, t("connections")),
      h("dd", null, conns !== null && max ? [h("meter", { min: 0, max, value: conns, high: max * 0.8 }), ` ${conns} / ${max}`] : "—"),
      h("dt", null, t("role")),
      h("dd", null, d.is_replica === undefined ? "—" : d.is_replica ? t("replica, lag {lag}", { lag: num(d.replication_lag_seconds, " s") }) : t("primary")),
      h("dt", null, t("longest transaction")),
      h("dd", null, oldest ? `${num(oldest.seconds, " s")} (pid ${oldest.pid}, ${oldest.datname ?? "?"}, ${oldest.state ?? "?"})` : t("none")),
      h("dt", null, t("waiting on locks")),
      h("dd", null, num(d.waiting)),
      h("dt", null, t("wraparound age")),
      h("dd", null, num(d.max_wraparound_age)),
    ),
    d.waiters?.length ? table(["pid", "database", "state", "waiting s", "blocked by"].map((c) => t(c)), d.waiters.map((w) => h("tr", null, h("td", null, w.pid), h("td", null, w.datname ?? "—"), h("td", null, w.state ?? "—"), h("td", { class: "num" }, num(w.seconds)), h("td", null, (w.blocked_by || []).join(", "))))) : null,
    p.metrics.length ? databases(p.metrics) : null,
    p.metrics.length
      ? h(
          "details",
          null,
          h("summary", null, t("{n} pg_* series", { n: p.metrics.length })),
          table(
            ["series", "labels", "value"].map((c) => t(c)),
            p.metrics.map((s) => h("tr", null, h("td", null, s.name), h("td", null, Object.entries(s.labels).filter(([k]) => k !== "server").map(([k, v]) => `${k}=${v}`).join(" ")), h("td", { class: "num" }, num(s.value)))),
            { class: "grid" },
          ),
        )
      : null,
    d.thresholds ? h("details", null, h("summary", null, t("thresholds")), jsonBlock(d.thresholds)) : null,
  );
}

export async function postgresPage(view, ctx) {
  const servers = await api("/api/v1/postgres");
  if (!ctx.alive) return;
  // no input on this page: the refresh redraws it, keeping open details and the scroll
  update(view, 
    h("h1", null, "PostgreSQL"),
    servers.length ? servers.map(server) : message("info", t("No postgres monitors. Declare one (kind postgres) in the fleet file or with POST /api/v1/monitors.")),
  );
  ctx.later(() => postgresPage(view, ctx), 5000);
}
