// Rollouts: the list, the start form, and one rollout's live progress with its controls.
import { api } from "./api.js";
import { badge, confirmDialog, fmtTime, h, jsonBlock, link, message, render, splitList, table, update } from "./dom.js";
import { t } from "./i18n.js";

const RINGS = ["internal", "canary", "early", "general", "late"];
const LIVE = ["pending", "scheduled", "running", "paused", "awaiting_approval", "waiting_window", "rolling_back"];
const POLL_MS = 1000;

function field(id, text, input, hint) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, t(text)), input, hint ? h("small", { class: "muted" }, t(hint)) : null);
}

// The canary-first plan: one instance first (rings in order: internal, canary, …), then up
// to a quarter, then the rest — never the whole fleet in one click by default.
const DEFAULT_WAVES = "1, 25%, 100%";

function startForm() {
  const out = h("div", { "aria-live": "polite", id: "plan-out" });
  const images = h("datalist", { id: "ro-images" });
  const f = {
    image: h("input", { name: "image", required: true, placeholder: "smartcpd-fake:2", size: 30, list: "ro-images", autocomplete: "off" }),
    tenants: h("input", { name: "tenants", placeholder: t("all"), size: 30 }),
    hosts: h("input", { name: "hosts", placeholder: t("all") }),
    labels: h("input", { name: "labels", placeholder: "dc=msk, tier=gold" }),
    waves: h("input", { name: "waves", value: DEFAULT_WAVES }),
    parallelism: h("input", { name: "parallelism", type: "number", min: 1, max: 500, value: 1 }),
    perHost: h("input", { name: "per_host_parallelism", type: "number", min: 1, max: 500, placeholder: t("no limit") }),
    maxUnavailable: h("input", { name: "max_unavailable", type: "number", min: 1, max: 500, placeholder: t("= parallelism") }),
    bake: h("input", { name: "bake_s", type: "number", min: 0, max: 86400, step: "any", value: 0 }),
    budget: h("input", { name: "failure_budget", value: "0", size: 5 }),
    action: h("select", { name: "failure_action" }, h("option", { value: "rollback" }, t("roll back")), h("option", { value: "pause" }, t("pause"))),
    approve: h("input", { name: "approve_after", placeholder: t("e.g. 1"), size: 8 }),
    order: h("select", { name: "order" }, ["auto", "stop-first", "start-first"].map((o) => h("option", { value: o }, o))),
    passes: h("input", { name: "gate_passes", type: "number", min: 1, max: 100, value: 3 }),
    deadline: h("input", { name: "gate_deadline_s", type: "number", min: 1, max: 3600, value: 60 }),
    migrate: h("input", { name: "migrate", placeholder: t("e.g. /app/migrate --apply"), size: 30 }),
    noBackup: h("input", { name: "no_backup", type: "checkbox" }),
    at: h("input", { name: "at", type: "datetime-local" }),
    window: h("input", { name: "window", type: "checkbox" }),
  };
  const rings = RINGS.map((r) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "ring", value: r }), r));

  // The images the hosts have (a rollout's image must be on every target host).
  api("/api/v1/images")
    .then((list) =>
      render(images, list.images.map((i) => h("option", { value: i.ref }, t(i.version ? "version {version}, on {hosts}" : "on {hosts}", { version: i.version, hosts: i.hosts.join(", ") })))),
    )
    .catch(() => {});

  function labels() {
    const out = {};
    for (const pair of splitList(f.labels.value)) {
      const [key, ...rest] = pair.split("=");
      if (!key || !rest.length) throw new Error(t("label {label}: expected KEY=VALUE", { label: JSON.stringify(pair) }));
      out[key] = rest.join("=");
    }
    return out;
  }

  function request() {
    const strategy = {
      waves: splitList(f.waves.value),
      parallelism: Number(f.parallelism.value),
      failure_budget: f.budget.value.trim() || "0",
      failure_action: f.action.value,
      approve_after: splitList(f.approve.value).map(Number),
      order: f.order.value,
      bake_s: Number(f.bake.value || 0),
    };
    if (f.perHost.value) strategy.per_host_parallelism = Number(f.perHost.value);
    if (f.maxUnavailable.value) strategy.max_unavailable = Number(f.maxUnavailable.value);
    const body = {
      image: f.image.value.trim(),
      strategy,
      gate: { passes: Number(f.passes.value), deadline_s: Number(f.deadline.value) },
      backup: !f.noBackup.checked,
    };
    const tenants = splitList(f.tenants.value);
    const hosts = splitList(f.hosts.value);
    const chosen = rings.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
    const wanted = labels();
    const migrate = f.migrate.value.trim().split(/\s+/).filter(Boolean);
    if (tenants.length) body.tenants = tenants;
    if (hosts.length) body.hosts = hosts;
    if (chosen.length) body.rings = chosen;
    if (Object.keys(wanted).length) body.labels = wanted;
    if (migrate.length) body.migrate = migrate;
    if (f.at.value || f.window.checked) {
      body.schedule = { window: f.window.checked };
      if (f.at.value) body.schedule.at = new Date(f.at.value).toISOString();
    }
    return body;
  }

  const planOf = (body) => api("/api/v1/rollouts/plan", { method: "POST", body });
  const count = (p) => p.waves.reduce((n, w) => n + w.length, 0);
  const showPlan = (p) =>
    render(out, 
      h("h3", null, t("Plan: {n} instance(s) in {waves} wave(s) to version {version}", { n: count(p), waves: p.waves.length, version: p.target_version ?? "?" })),
      h("ol", { class: "plan" }, p.waves.map((w) => h("li", null, w.map((x) => `${x.tenant}@${x.host} (v${x.version ?? "?"})`).join(", ")))),
    );

  async function plan() {
    if (!form.reportValidity()) return;
    render(out, message("info", t("Planning…")));
    try {
      showPlan(await planOf(request()));
    } catch (err) {
      render(out, message("error", err.message));
    }
  }

  async function start(event) {
    event.preventDefault();
    let body, p;
    try {
      body = request();
      render(out, message("info", t("Planning…")));
      p = await planOf(body);
    } catch (err) {
      render(out, message("error", err.message));
      return;
    }
    showPlan(p);
    const when = body.schedule?.at ? t(" at {time}", { time: fmtTime(body.schedule.at) }) : t(body.schedule?.window ? " in each tenant's maintenance window" : " now");
    const n = count(p);
    const ok = await confirmDialog(
      t("Start a rollout of {n} instance(s) in {waves} wave(s)?", { n, waves: p.waves.length }),
      [
        t("{image} (version {version}) replaces the running version of {n} instance(s){when}.", { image: body.image, version: p.target_version ?? "?", n, when }),
        t("Waves: {waves}; on failure: {action} (budget {budget}).", {
          waves: p.waves.map((w) => w.length).join(" → "),
          action: t(body.strategy.failure_action === "pause" ? "pause" : "roll back"),
          budget: body.strategy.failure_budget,
        }),
      ],
      t("Start rollout"),
    );
    if (!ok) {
      render(out, message("info", t("Not started.")), out.childNodes.length ? [...out.childNodes] : null);
      return;
    }
    render(out, message("info", t("Starting…")));
    try {
      const r = await api("/api/v1/rollouts", { method: "POST", body });
      location.hash = `#/rollouts/${r.id}`;
    } catch (err) {
      render(out, message("error", err.message));
    }
  }

  const form = h(
    "form",
    { id: "start-rollout", class: "card form-grid", onsubmit: start, "aria-labelledby": "start-title" },
    h("h2", { id: "start-title" }, t("Start a rollout")),
    field("ro-image", "Image", f.image, "on every target host: pick one the hosts have"),
    images,
    field("ro-tenants", "Tenants", f.tenants, "slugs, comma-separated; empty = all"),
    h("fieldset", { class: "field" }, h("legend", null, t("Rings (empty = all)")), rings),
    field("ro-hosts", "Hosts", f.hosts, "empty = all"),
    field("ro-labels", "Container labels", f.labels, "KEY=VALUE, comma-separated; all must match"),
    field("ro-waves", "Waves", f.waves, "cumulative: 1, 25%, 100% = a canary first"),
    field("ro-par", "Parallelism", f.parallelism),
    field("ro-perhost", "Per-host parallelism", f.perHost),
    field("ro-maxun", "Max unavailable", f.maxUnavailable),
    field("ro-bake", "Bake after each wave (s)", f.bake),
    field("ro-budget", "Failure budget", f.budget, "count or percent"),
    field("ro-action", "When over budget", f.action),
    field("ro-approve", "Approve after waves", f.approve),
    field("ro-order", "Order", f.order, "auto = start-first without fixed host ports"),
    field("ro-passes", "Health gate passes", f.passes),
    field("ro-deadline", "Health gate deadline (s)", f.deadline),
    field("ro-migrate", "Migration command", f.migrate, "run in a one-off container of the new image first"),
    h("div", { class: "field" }, h("label", { class: "check" }, f.noBackup, t("no backup (skip pg_dump of tenant databases)"))),
    field("ro-at", "Start at (local time)", f.at, "empty = now; a past time is refused"),
    h("div", { class: "field" }, h("label", { class: "check" }, f.window, t("only in each tenant's maintenance window"))),
    h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: plan }, t("Plan (dry run)")), h("button", { type: "submit" }, t("Start rollout"))),
    out,
  );
  return form;
}

function rolloutRows(rollouts) {
  return rollouts.length
    ? table(
        ["id", "image", "version", "status", "by", "created", "finished", "incident"].map((c) => t(c)),
        rollouts.map((r) =>
          h(
            "tr",
            { dataset: { rollout: r.id } },
            h("th", { scope: "row" }, link(`#${r.id}`, "rollouts", r.id)),
            h("td", null, r.image),
            h("td", null, r.target_version ?? "—"),
            h("td", { class: "status" }, badge(r.status), r.control ? t(" ({control} requested)", { control: r.control }) : ""),
            h("td", null, r.created_by),
            h("td", null, fmtTime(r.created_at)),
            h("td", null, fmtTime(r.finished_at)),
            h("td", null, r.incident ? link(r.incident, "incidents", r.incident) : "—"),
          ),
        ),
        { id: "rollouts", class: "grid" },
      )
    : h("p", { class: "muted" }, t("No rollouts yet."));
}

export async function rolloutsPage(view, ctx) {
  const rollouts = await api("/api/v1/rollouts?limit=100");
  if (!ctx.alive) return;
  const live = (list) => list.some((r) => LIVE.includes(r.status));
  // Only the list is refreshed (every 3 s while one is live); the start form is built once.
  const list = h("div", { id: "rollout-list" }, rolloutRows(rollouts));
  render(view, h("h1", null, t("Rollouts")), list, startForm());
  if (live(rollouts)) {
    ctx.every(3000, async () => {
      const now = await api("/api/v1/rollouts?limit=100");
      if (!ctx.alive) return false;
      update(list, rolloutRows(now));
      return live(now);
    });
  }
}

/** A running gate's progress: "gate 1/3 passes · last HTTP 500 · 42 s left". */
function gateProgress(step) {
  if (step.step !== "gate" || step.state !== "started") return null;
  const p = step.detail?.progress;
  if (!p) return t("gate: first check…");
  return t("gate {passes}/{needed} passes · last {last} · {left} s left", { passes: p.passes, needed: p.needed, last: p.last, left: Math.round(p.left_s) });
}

function steps(instance) {
  return h(
    "ol",
    { class: "steps" },
    instance.steps.map((s) => {
      const gate = gateProgress(s);
      return h("li", { class: "step s-" + s.state, title: JSON.stringify(s.detail) }, `${s.step}: ${s.state}`, gate ? h("span", { class: "gate-progress" }, ` (${gate})`) : null);
    }),
  );
}

/** Only updated instances are progress; failed, reverted and errors are counted apart. */
function progressOf(instances) {
  const counts = {};
  for (const i of instances) counts[i.state] = (counts[i.state] || 0) + 1;
  const updated = counts.updated || 0;
  const others = ["failed", "error", "reverted", "reverting"].filter((st) => counts[st]).map((st) => `${counts[st]} ${t(st)}`);
  return { updated, text: [t("{updated} / {total} updated", { updated, total: instances.length }), ...others].join(" · ") };
}

const CONFIRM = {
  abort: (r, updated) => [
    t("Abort rollout {id}?", { id: r.id }),
    [t("No new instance starts; those in progress finish. {updated} of {total} instance(s) updated so far stay on {image}.", { updated, total: r.instances.length, image: r.image })],
    t("Abort rollout"),
  ],
  rollback: (r, updated) => [
    t("Roll back rollout {id}?", { id: r.id }),
    [t("{updated} updated instance(s) of {total} ({waves} wave(s)) go back to their previous version.", { updated, total: r.instances.length, waves: new Set(r.instances.map((i) => i.wave)).size })],
    t("Roll back"),
  ],
};

function controls(rollout, status, refresh) {
  // The API says which controls it accepts now (`actions`): a button it would refuse (409)
  // is disabled, e.g. rollback of a rollout that updated nothing.
  const accepted = rollout.actions || [];
  const act = async (action) => {
    const ask = CONFIRM[action];
    if (ask && !(await confirmDialog(...ask(rollout, progressOf(rollout.instances).updated), { danger: true }))) return;
    render(status, message("info", t("{action}…", { action: t(action) })));
    try {
      await api(`/api/v1/rollouts/${rollout.id}/${action}`, { method: "POST" });
      render(status, message("info", t("{action}: requested", { action: t(action) })));
      refresh();
    } catch (err) {
      render(status, message("error", `${t(action)}: ${err.message}`));
    }
  };
  return h(
    "div",
    { class: "actions", role: "group", "aria-label": t("Operator controls") },
    ["pause", "resume", "approve", "abort", "rollback"].map((action) =>
      h("button", { type: "button", class: action === "abort" || action === "rollback" ? "danger" : "", disabled: !accepted.includes(action), onclick: () => act(action), dataset: { action } }, t(action)),
    ),
  );
}

export async function rolloutPage(view, ctx, id) {
  const status = h("div", { "aria-live": "polite" });
  const body = h("div");
  const stamp = h("span", { class: "muted" });
  let next = null;
  const refresh = async () => {
    if (next !== null) ctx.cancel(next);
    next = null;
    let r;
    try {
      r = await api(`/api/v1/rollouts/${id}`);
    } catch (err) {
      if (ctx.alive) render(body, message("error", err.message));
      return;
    }
    if (!ctx.alive) return;
    const progress = progressOf(r.instances);
    const waves = [...new Set(r.instances.map((i) => i.wave))];
    const reason = r.progress?.reason;
    update(body, 
      h(
        "dl",
        { class: "meta" },
        h("dt", null, t("status")),
        h("dd", { id: "rollout-status" }, badge(r.status)),
        h("dt", null, t("image")),
        h("dd", null, r.image, r.target_version ? t(" (version {version})", { version: r.target_version }) : ""),
        h("dt", null, t("progress")),
        h("dd", { id: "rollout-progress" }, h("progress", { max: r.instances.length || 1, value: progress.updated }), ` ${progress.text}`),
        reason ? [h("dt", null, t(LIVE.includes(r.status) ? "now" : "ended")), h("dd", { id: "rollout-reason" }, reason)] : null,
        h("dt", null, t("created")),
        h("dd", null, t("{time} by {who}", { time: fmtTime(r.created_at), who: r.created_by })),
        h("dt", null, t("started / finished")),
        h("dd", null, `${fmtTime(r.started_at)} / ${fmtTime(r.finished_at)}`),
        r.scheduled_for ? [h("dt", null, t("scheduled for")), h("dd", null, fmtTime(r.scheduled_for))] : null,
        r.control ? [h("dt", null, t("requested")), h("dd", null, r.control)] : null,
        r.error ? [h("dt", null, t("error")), h("dd", { class: "error-text" }, r.error)] : null,
        r.incident ? [h("dt", null, t("incident")), h("dd", null, link(r.incident, "incidents", r.incident))] : null,
      ),
      controls(r, status, refresh),
      waves.map((w) =>
        h(
          "section",
          { class: "wave" },
          h("h2", null, t("Wave {n}", { n: w + 1 })),
          table(
            ["#", "tenant", "host", "container", "from", "state", "steps", "error"].map((c) => t(c)),
            r.instances
              .filter((i) => i.wave === w)
              .map((i) =>
                h(
                  "tr",
                  { dataset: { tenant: i.tenant } },
                  h("td", { class: "num" }, i.position),
                  h("th", { scope: "row" }, i.tenant),
                  h("td", null, i.host),
                  h("td", null, i.container_name),
                  h("td", null, i.old_version ?? i.old_image ?? "—"),
                  h("td", { class: "state" }, badge(i.state)),
                  h("td", null, steps(i)),
                  h("td", { class: "error-text" }, i.error ?? ""),
                ),
              ),
            { class: "grid" },
          ),
        ),
      ),
      h("details", null, h("summary", null, t("Selection, options and progress (JSON)")), jsonBlock({ selection: r.selection, options: r.options, progress: r.progress })),
    );
    stamp.textContent = LIVE.includes(r.status) ? t("live · updated {time}", { time: new Date().toLocaleTimeString() }) : t("finished");
    if (LIVE.includes(r.status)) next = ctx.later(refresh, POLL_MS);
  };
  render(view, h("h1", null, t("Rollout {id} ", { id }), stamp), status, body, h("p", null, link(t("← all rollouts"), "rollouts")));
  await refresh();
}
