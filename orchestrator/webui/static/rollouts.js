// Rollouts: the list, the start form, and one rollout's live progress with its controls.
import { api } from "./api.js";
import { badge, fmtTime, h, jsonBlock, link, message, render, splitList, table } from "./dom.js";

const RINGS = ["internal", "canary", "early", "general", "late"];
const LIVE = ["pending", "scheduled", "running", "paused", "awaiting_approval", "waiting_window", "rolling_back"];
const POLL_MS = 1000;

function field(id, text, input, hint) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, text), input, hint ? h("small", { class: "muted" }, hint) : null);
}

function startForm() {
  const out = h("div", { "aria-live": "polite" });
  const f = {
    image: h("input", { name: "image", required: true, placeholder: "smartcpd-fake:2", size: 30 }),
    tenants: h("input", { name: "tenants", placeholder: "all", size: 30 }),
    hosts: h("input", { name: "hosts", placeholder: "all" }),
    waves: h("input", { name: "waves", value: "100%" }),
    parallelism: h("input", { name: "parallelism", type: "number", min: 1, max: 500, value: 1 }),
    budget: h("input", { name: "failure_budget", value: "0", size: 5 }),
    action: h("select", { name: "failure_action" }, h("option", { value: "rollback" }, "roll back"), h("option", { value: "pause" }, "pause")),
    approve: h("input", { name: "approve_after", placeholder: "e.g. 1", size: 8 }),
    passes: h("input", { name: "gate_passes", type: "number", min: 1, max: 100, value: 3 }),
    deadline: h("input", { name: "gate_deadline_s", type: "number", min: 1, max: 3600, value: 60 }),
    at: h("input", { name: "at", type: "datetime-local" }),
    window: h("input", { name: "window", type: "checkbox" }),
  };
  const rings = RINGS.map((r) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "ring", value: r }), r));

  function request() {
    const body = {
      image: f.image.value.trim(),
      strategy: {
        waves: splitList(f.waves.value),
        parallelism: Number(f.parallelism.value),
        failure_budget: f.budget.value.trim() || "0",
        failure_action: f.action.value,
        approve_after: splitList(f.approve.value).map(Number),
      },
      gate: { passes: Number(f.passes.value), deadline_s: Number(f.deadline.value) },
    };
    const tenants = splitList(f.tenants.value);
    const hosts = splitList(f.hosts.value);
    const chosen = rings.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
    if (tenants.length) body.tenants = tenants;
    if (hosts.length) body.hosts = hosts;
    if (chosen.length) body.rings = chosen;
    if (f.at.value || f.window.checked) {
      body.schedule = { window: f.window.checked };
      if (f.at.value) body.schedule.at = new Date(f.at.value).toISOString();
    }
    return body;
  }

  async function plan() {
    if (!form.reportValidity()) return;
    render(out, message("info", "Planning…"));
    try {
      const p = await api("/api/v1/rollouts/plan", { method: "POST", body: request() });
      render(out, 
        h("h3", null, `Plan: ${p.waves.length} wave(s) to version ${p.target_version ?? "?"}`),
        h("ol", { class: "plan" }, p.waves.map((w) => h("li", null, w.map((x) => `${x.tenant}@${x.host} (v${x.version ?? "?"})`).join(", ")))),
      );
    } catch (err) {
      render(out, message("error", err.message));
    }
  }

  async function start(event) {
    event.preventDefault();
    render(out, message("info", "Starting…"));
    try {
      const r = await api("/api/v1/rollouts", { method: "POST", body: request() });
      location.hash = `#/rollouts/${r.id}`;
    } catch (err) {
      render(out, message("error", err.message));
    }
  }

  const form = h(
    "form",
    { id: "start-rollout", class: "card form-grid", onsubmit: start, "aria-labelledby": "start-title" },
    h("h2", { id: "start-title" }, "Start a rollout"),
    field("ro-image", "Image", f.image, "must exist on every target host"),
    field("ro-tenants", "Tenants", f.tenants, "slugs, comma-separated; empty = all"),
    h("fieldset", { class: "field" }, h("legend", null, "Rings (empty = all)"), rings),
    field("ro-hosts", "Hosts", f.hosts, "empty = all"),
    field("ro-waves", "Waves", f.waves, "cumulative: 1, 25%, 100%"),
    field("ro-par", "Parallelism", f.parallelism),
    field("ro-budget", "Failure budget", f.budget, "count or percent"),
    field("ro-action", "When over budget", f.action),
    field("ro-approve", "Approve after waves", f.approve),
    field("ro-passes", "Health gate passes", f.passes),
    field("ro-deadline", "Health gate deadline (s)", f.deadline),
    field("ro-at", "Start at (local time)", f.at, "empty = now"),
    h("div", { class: "field" }, h("label", { class: "check" }, f.window, "only in each tenant's maintenance window")),
    h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: plan }, "Plan (dry run)"), h("button", { type: "submit" }, "Start rollout")),
    out,
  );
  return form;
}

export async function rolloutsPage(view, ctx) {
  const rollouts = await api("/api/v1/rollouts?limit=100");
  if (!ctx.alive) return;
  render(view, 
    h("h1", null, "Rollouts"),
    rollouts.length
      ? table(
          ["id", "image", "version", "status", "by", "created", "finished", "incident"],
          rollouts.map((r) =>
            h(
              "tr",
              null,
              h("th", { scope: "row" }, link(`#${r.id}`, "rollouts", r.id)),
              h("td", null, r.image),
              h("td", null, r.target_version ?? "—"),
              h("td", null, badge(r.status)),
              h("td", null, r.created_by),
              h("td", null, fmtTime(r.created_at)),
              h("td", null, fmtTime(r.finished_at)),
              h("td", null, r.incident ? link(r.incident, "incidents", r.incident) : "—"),
            ),
          ),
          { id: "rollouts", class: "grid" },
        )
      : h("p", { class: "muted" }, "No rollouts yet."),
    startForm(),
  );
  if (rollouts.some((r) => LIVE.includes(r.status))) ctx.later(() => rolloutsPage(view, ctx), 3000);
}

function steps(instance) {
  return h(
    "ol",
    { class: "steps" },
    instance.steps.map((s) =>
      h("li", { class: "step s-" + s.state, title: JSON.stringify(s.detail) }, `${s.step}: ${s.state}`),
    ),
  );
}

function controls(rollout, status, refresh) {
  const can = {
    pause: ["running", "awaiting_approval", "waiting_window"],
    resume: ["paused"],
    approve: ["awaiting_approval"],
    abort: LIVE.filter((s) => s !== "rolling_back"),
    rollback: ["running", "paused", "awaiting_approval", "waiting_window", "succeeded", "failed", "aborted"],
  };
  const act = async (action) => {
    render(status, message("info", `${action}…`));
    try {
      await api(`/api/v1/rollouts/${rollout.id}/${action}`, { method: "POST" });
      render(status, message("info", `${action}: requested`));
      refresh();
    } catch (err) {
      render(status, message("error", `${action}: ${err.message}`));
    }
  };
  return h(
    "div",
    { class: "actions", role: "group", "aria-label": "Operator controls" },
    Object.entries(can).map(([action, when]) =>
      h("button", { type: "button", class: action === "abort" || action === "rollback" ? "danger" : "", disabled: !when.includes(rollout.status), onclick: () => act(action) }, action),
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
    const done = r.instances.filter((i) => !["pending", "updating", "reverting"].includes(i.state)).length;
    const waves = [...new Set(r.instances.map((i) => i.wave))];
    render(body, 
      h(
        "dl",
        { class: "meta" },
        h("dt", null, "status"),
        h("dd", { id: "rollout-status" }, badge(r.status)),
        h("dt", null, "image"),
        h("dd", null, r.image, r.target_version ? ` (version ${r.target_version})` : ""),
        h("dt", null, "progress"),
        h("dd", null, h("progress", { max: r.instances.length || 1, value: done }), ` ${done} / ${r.instances.length} instances`),
        h("dt", null, "created"),
        h("dd", null, `${fmtTime(r.created_at)} by ${r.created_by}`),
        h("dt", null, "started / finished"),
        h("dd", null, `${fmtTime(r.started_at)} / ${fmtTime(r.finished_at)}`),
        r.scheduled_for ? [h("dt", null, "scheduled for"), h("dd", null, fmtTime(r.scheduled_for))] : null,
        r.control ? [h("dt", null, "requested"), h("dd", null, r.control)] : null,
        r.error ? [h("dt", null, "error"), h("dd", { class: "error-text" }, r.error)] : null,
        r.incident ? [h("dt", null, "incident"), h("dd", null, link(r.incident, "incidents", r.incident))] : null,
      ),
      controls(r, status, refresh),
      waves.map((w) =>
        h(
          "section",
          { class: "wave" },
          h("h2", null, `Wave ${w + 1}`),
          table(
            ["#", "tenant", "host", "container", "from", "state", "steps", "error"],
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
      h("details", null, h("summary", null, "Selection, options and progress (JSON)"), jsonBlock({ selection: r.selection, options: r.options, progress: r.progress })),
    );
    stamp.textContent = LIVE.includes(r.status) ? `live · updated ${new Date().toLocaleTimeString()}` : "finished";
    if (LIVE.includes(r.status)) next = ctx.later(refresh, POLL_MS);
  };
  render(view, h("h1", null, `Rollout ${id} `, stamp), status, body, h("p", null, link("← all rollouts", "rollouts")));
  await refresh();
}
