// Incidents: the list with filters, one ticket with its timeline, evidence, attachments,
// a comment form and the status actions.
import { api, session } from "./api.js";
import { badge, fmtTime, h, jsonBlock, link, message, render, table } from "./dom.js";
import { label, PRIORITIES, STATUSES, TRANSITIONS, TYPES } from "./i18n.js";

const PAGE = 50;

function select(name, text, options, chosen) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: `f-${name}` }, text),
    h(
      "select",
      { id: `f-${name}`, name },
      h("option", { value: "" }, "any"),
      Object.entries(options).map(([value, pair]) => h("option", { value, selected: value === chosen }, label(pair, value))),
    ),
  );
}

export async function incidentsPage(view, ctx) {
  const p = ctx.params;
  const query = new URLSearchParams();
  for (const key of ["type", "status", "tenant", "priority"]) if (p.get(key)) query.set(key, p.get(key));
  const offset = Math.max(0, Number(p.get("offset")) || 0);
  query.set("limit", PAGE);
  query.set("offset", offset);
  const items = await api(`/api/v1/incidents?${query}`);
  if (!ctx.alive) return;
  const filters = h(
    "form",
    {
      class: "toolbar filters",
      "aria-label": "Filters",
      onsubmit: (event) => {
        event.preventDefault();
        const q = new URLSearchParams();
        for (const [k, v] of new FormData(event.target)) if (v) q.set(k, v);
        location.hash = `#/incidents${q.size ? "?" + q : ""}`;
      },
    },
    select("type", "Type", TYPES, p.get("type")),
    select("status", "Status", STATUSES, p.get("status")),
    select("priority", "Priority", PRIORITIES, p.get("priority")),
    h("div", { class: "field" }, h("label", { for: "f-tenant" }, "Tenant"), h("input", { id: "f-tenant", name: "tenant", value: p.get("tenant") || "", size: 12 })),
    h("button", { type: "submit" }, "Apply"),
  );
  const pageLink = (text, to) => {
    const q = new URLSearchParams(p);
    q.set("offset", to);
    return h("a", { href: `#/incidents?${q}` }, text);
  };
  render(view, 
    h("h1", null, "Incidents"),
    filters,
    items.length
      ? table(
          ["number", "type", "status", "priority", "tenant", "subject", "updated"],
          items.map((i) =>
            h(
              "tr",
              { dataset: { number: i.number } },
              h("th", { scope: "row" }, link(i.number, "incidents", i.number)),
              h("td", null, label(i.labels.type, i.type)),
              h("td", null, badge(i.status, label(i.labels.status, i.status_label))),
              h("td", null, badge("p-" + i.priority, label(i.labels.priority, i.priority))),
              h("td", null, i.tenant ?? "—"),
              h("td", null, i.subject),
              h("td", null, fmtTime(i.updated_at)),
            ),
          ),
          { id: "incidents", class: "grid" },
        )
      : h("p", { class: "muted" }, "No tickets match."),
    h(
      "p",
      { class: "pager" },
      offset > 0 ? pageLink("← newer", Math.max(0, offset - PAGE)) : null,
      " ",
      items.length === PAGE ? pageLink("older →", offset + PAGE) : null,
    ),
  );
}

function eventItem(e) {
  const hasData = e.data && Object.keys(e.data).length > 0;
  return h(
    "li",
    { class: "event k-" + e.kind.replace(/[^a-z_]/gi, "") },
    h("div", { class: "event-head" }, h("time", { datetime: e.at }, fmtTime(e.at)), " · ", h("strong", null, e.author), " · ", h("span", { class: "kind" }, e.kind)),
    e.body ? h("div", { class: "event-body" }, e.body) : null,
    hasData ? h("details", { open: e.kind === "evidence" }, h("summary", null, e.kind === "evidence" ? "evidence" : "data"), jsonBlock(e.data)) : null,
  );
}

async function download(number, att, status) {
  try {
    const resp = await api(`/api/v1/incidents/${encodeURIComponent(number)}/attachments/${att.id}`, { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: att.filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    render(status, message("error", err.message));
  }
}

function ref(r) {
  return h("li", null, link(r.number, "incidents", r.number), ` ${r.tenant ?? ""} · ${label(STATUSES[r.status], r.status)} · `, r.subject);
}

export async function incidentPage(view, ctx, number) {
  const t = await api(`/api/v1/incidents/${encodeURIComponent(number)}`);
  if (!ctx.alive) return;
  const status = h("div", { id: "ticket-msg", "aria-live": "polite" });
  const reload = () => incidentPage(view, ctx, number);
  const post = async (path, body) => {
    render(status, message("info", "Saving…"));
    try {
      await api(`/api/v1/incidents/${encodeURIComponent(number)}/${path}`, { method: "POST", body });
      await reload();
      view.querySelector("#ticket-msg")?.append(message("info", "Saved."));
    } catch (err) {
      render(status, message("error", err.message));
    }
  };

  const text = h("textarea", { id: "comment-body", name: "body", rows: 4, required: true, maxlength: 100000 });
  const customer = h("input", { id: "comment-customer", type: "checkbox", name: "customer" });
  const commentForm = h(
    "form",
    {
      id: "comment-form",
      class: "card",
      "aria-labelledby": "comment-title",
      onsubmit: (event) => {
        event.preventDefault();
        post("comments", { author: session.name(), body: text.value, customer: customer.checked });
      },
    },
    h("h2", { id: "comment-title" }, "Add a comment"),
    h("label", { for: "comment-body" }, `Comment (as ${session.name()})`),
    text,
    h("label", { class: "check" }, customer, "a reply from the customer (reopens a ticket awaiting information or with a solution)"),
    h("button", { type: "submit" }, "Add comment"),
  );

  const next = TRANSITIONS[t.status] || [];
  const statusSelect = h("select", { id: "status-to", name: "status" }, next.map((s) => h("option", { value: s }, label(STATUSES[s], s))));
  const statusComment = h("textarea", { id: "status-comment", name: "comment", rows: 3 });
  const statusForm = h(
    "form",
    {
      id: "status-form",
      class: "card",
      "aria-labelledby": "status-title",
      onsubmit: (event) => {
        event.preventDefault();
        post("status", { status: statusSelect.value, comment: statusComment.value, author: session.name() });
      },
    },
    h("h2", { id: "status-title" }, "Change status"),
    h("label", { for: "status-to" }, "New status"),
    statusSelect,
    h("label", { for: "status-comment" }, `Comment (required for «${label(STATUSES.solution_provided)}»)`),
    statusComment,
    h("button", { type: "submit", disabled: next.length === 0 }, "Change status"),
  );

  render(view, 
    h("h1", null, h("span", { class: "number" }, t.number), " ", h("span", { id: "ticket-subject" }, t.subject)),
    h(
      "dl",
      { class: "meta", id: "ticket-status" },
      h("dt", null, "type"),
      h("dd", null, label(t.labels.type, t.type)),
      h("dt", null, "status"),
      h("dd", { id: "ticket-status-value" }, badge(t.status, label(t.labels.status, t.status_label))),
      h("dt", null, "priority"),
      h("dd", null, label(t.labels.priority, t.priority)),
      h("dt", null, "tenant"),
      h("dd", null, t.tenant ?? "—"),
      h("dt", null, "source"),
      h("dd", null, t.source),
      t.rollout_id ? [h("dt", null, "rollout"), h("dd", null, link(`rollout ${t.rollout_id}`, "rollouts", t.rollout_id))] : null,
      h("dt", null, "opened / updated"),
      h("dd", null, `${fmtTime(t.created_at)} / ${fmtTime(t.updated_at)}`),
    ),
    status,
    t.parent ? h("p", null, "Part of mass incident ", link(t.parent.number, "incidents", t.parent.number), " — ", t.parent.subject) : null,
    t.description ? [h("h2", null, "Description"), h("div", { class: "description" }, t.description)] : null,
    t.children.length ? [h("h2", null, `Tenant incidents (${t.children.length})`), h("ul", null, t.children.map(ref))] : null,
    t.attachments.length
      ? [
          h("h2", null, "Attachments"),
          h(
            "ul",
            { id: "attachments" },
            t.attachments.map((a) =>
              h("li", null, h("button", { type: "button", class: "link", onclick: () => download(t.number, a, status) }, a.filename), ` ${a.content_type}, ${a.size} bytes, by ${a.author}, ${fmtTime(a.created_at)}`),
            ),
          ),
        ]
      : null,
    h("h2", null, "Timeline"),
    h("ol", { id: "timeline", class: "timeline" }, t.events.map(eventItem)),
    h("div", { class: "forms" }, commentForm, statusForm),
    h("p", null, link("← all incidents", "incidents")),
  );
}
