// Incidents: the list with filters, one ticket with its timeline, evidence (as facts and log
// text), attachments, a comment form, the status, priority and owner controls. Each form shows
// its own result and errors beside its button.
import { api, session } from "./api.js";
import { badge, fmtTime, h, isTime, link, message, render, table } from "./dom.js";
import { label, PRIORITIES, STATUSES, t, TRANSITIONS, TYPES } from "./i18n.js";

const PAGE = 50;

function select(name, text, options, chosen) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: `f-${name}` }, text),
    h(
      "select",
      { id: `f-${name}`, name },
      h("option", { value: "" }, t("any")),
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
    select("type", t("Type"), TYPES, p.get("type")),
    select("status", t("Status"), STATUSES, p.get("status")),
    select("priority", t("Priority"), PRIORITIES, p.get("priority")),
    h("div", { class: "field" }, h("label", { for: "f-tenant" }, t("Tenant")), h("input", { id: "f-tenant", name: "tenant", value: p.get("tenant") || "", size: 12 })),
    h("button", { type: "submit" }, t("Apply")),
  );
  const pageLink = (text, to) => {
    const q = new URLSearchParams(p);
    q.set("offset", to);
    return h("a", { href: `#/incidents?${q}` }, text);
  };
  render(view, 
    h("h1", null, t("Incidents")),
    filters,
    items.length
      ? table(
          ["number", "type", "status", "priority", "tenant", "subject", "updated"].map(t),
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
      : h("p", { class: "muted" }, t("No tickets match.")),
    h(
      "p",
      { class: "pager" },
      offset > 0 ? pageLink(t("← newer"), Math.max(0, offset - PAGE)) : null,
      " ",
      items.length === PAGE ? pageLink(t("older →"), offset + PAGE) : null,
    ),
  );
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
// Text kept as it was printed: container logs, a health check's or a probe's output.
const isLogText = (key, v) => typeof v === "string" && (/(^|_)(logs?|output|body|excerpt)$/.test(key) || v.includes("\n"));

function factValue(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (isTime(v)) return h("time", { datetime: v }, fmtTime(v));
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.length ? v.map((x) => (isObject(x) ? JSON.stringify(x) : String(x))).join(", ") : "—";
  return String(v);
}

/** Evidence as facts: a table of key → value (nested keys dotted, times in the user's zone,
 * zero times "—"), log text in <pre> with its line breaks, each listed container on its own. */
export function evidenceView(data) {
  const rows = [];
  const blocks = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (isLogText(k, v)) {
        blocks.push(h("div", { class: "log-block" }, h("div", { class: "muted" }, key), h("pre", { class: "logs" }, v)));
      } else if (Array.isArray(v) && v.length && v.every(isObject)) {
        v.forEach((item, n) => blocks.push(h("section", { class: "evidence-item" }, h("h4", null, `${key} ${n + 1}${item.name ? ": " + item.name : ""}`), evidenceView(item))));
      } else if (isObject(v)) {
        walk(v, key);
      } else {
        rows.push(h("tr", null, h("th", { scope: "row" }, key), h("td", null, factValue(v))));
      }
    }
  };
  walk(data, "");
  return h("div", { class: "evidence" }, rows.length ? h("table", { class: "facts" }, h("tbody", null, rows)) : null, blocks);
}

/** «Новая → Решение предоставлено» (in the chosen language) for a status or priority change. */
function transition(e) {
  const names = e.kind === "priority" ? PRIORITIES : e.kind === "owner" ? null : STATUSES;
  const name = (v) => (names ? label(names[v], v) : v || t("nobody"));
  return h("div", { class: "transition" }, `${name(e.data.from)} → ${name(e.data.to)}`);
}

const KIND_TITLES = { solution: "status", evidence: "Evidence" };

function eventItem(e, description) {
  const data = e.data || {};
  const changes = "to" in data && ["status", "solution", "priority", "owner"].includes(e.kind);
  // The "created" entry's body is the description, shown above already.
  const body = e.kind === "created" && e.body === description ? t("Ticket created") : e.body;
  const hide = (k) => (changes && ["from", "to", "label_ru", "label_en"].includes(k)) || (e.kind === "comment" && k === "customer");
  const rest = Object.fromEntries(Object.entries(data).filter(([k]) => !hide(k)));
  return h(
    "li",
    { class: "event k-" + e.kind.replace(/[^a-z_]/gi, "") },
    h("div", { class: "event-head" }, h("time", { datetime: e.at }, fmtTime(e.at)), " · ", h("strong", null, e.author), " · ", h("span", { class: "kind" }, t(KIND_TITLES[e.kind] ?? e.kind))),
    changes ? transition(e) : null,
    e.kind === "comment" && data.customer ? h("div", { class: "muted" }, t("the customer's reply")) : null,
    body ? h("div", { class: "event-body" }, body) : null,
    Object.keys(rest).length ? evidenceView(rest) : null,
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

/** A form that POSTs to the ticket and says what happened beside its own button. */
function ticketForm(id, title, fields, submitText, send, disabled) {
  const out = h("div", { class: "field-msg", id: `${id}-msg`, "aria-live": "polite" });
  const form = h(
    "form",
    {
      id,
      class: "card",
      "aria-labelledby": `${id}-title`,
      onsubmit: (event) => {
        event.preventDefault();
        send(out);
      },
    },
    h("h2", { id: `${id}-title` }, title),
    fields,
    h("div", { class: "actions" }, h("button", { type: "submit", disabled }, submitText)),
    out,
  );
  return form;
}

export async function incidentPage(view, ctx, number, saved) {
  const tk = await api(`/api/v1/incidents/${encodeURIComponent(number)}`);
  if (!ctx.alive) return;
  const reload = (formId) => incidentPage(view, ctx, number, formId);
  const post = async (out, formId, path, body) => {
    for (const other of view.querySelectorAll(".field-msg")) other.replaceChildren();
    render(out, message("info", t("Saving…")));
    try {
      await api(`/api/v1/incidents/${encodeURIComponent(number)}/${path}`, { method: "POST", body });
      await reload(formId);
    } catch (err) {
      render(out, message("error", err.message));
    }
  };

  const text = h("textarea", { id: "comment-body", name: "body", rows: 4, required: true, maxlength: 100000 });
  const customer = h("input", { id: "comment-customer", type: "checkbox", name: "customer" });
  const commentForm = ticketForm(
    "comment-form",
    t("Add a comment"),
    [h("label", { for: "comment-body" }, `${t("Comment")} (${t("as")} ${session.name()})`), text, h("label", { class: "check" }, customer, t("a reply from the customer (reopens a ticket awaiting information or with a solution)"))],
    t("Add comment"),
    (out) => post(out, "comment-form", "comments", { author: session.name(), body: text.value, customer: customer.checked }),
  );

  const next = TRANSITIONS[tk.status] || [];
  const statusSelect = h("select", { id: "status-to", name: "status" }, next.map((st) => h("option", { value: st }, label(STATUSES[st], st))));
  const statusComment = h("textarea", { id: "status-comment", name: "comment", rows: 3 });
  const statusForm = ticketForm(
    "status-form",
    t("Change status"),
    [h("label", { for: "status-to" }, t("New status")), statusSelect, h("label", { for: "status-comment" }, `${t("Comment")} (${t("required for")} «${label(STATUSES.solution_provided)}»)`), statusComment],
    t("Change status"),
    (out) => post(out, "status-form", "status", { status: statusSelect.value, comment: statusComment.value, author: session.name() }),
    next.length === 0,
  );

  const prioritySelect = h("select", { id: "priority-to", name: "priority" }, Object.entries(PRIORITIES).map(([v, pair]) => h("option", { value: v, selected: v === tk.priority }, label(pair, v))));
  const priorityForm = ticketForm(
    "priority-form",
    t("Set priority"),
    [h("label", { for: "priority-to" }, t("New priority")), prioritySelect],
    t("Set priority"),
    (out) => post(out, "priority-form", "priority", { priority: prioritySelect.value, author: session.name() }),
  );

  const ownerInput = h("input", { id: "owner-name", name: "owner", value: tk.owner ?? "", maxlength: 100, placeholder: session.name() });
  const ownerForm = ticketForm(
    "owner-form",
    t("Set owner"),
    [h("label", { for: "owner-name" }, t("Owner (empty: nobody)")), ownerInput],
    t("Set owner"),
    (out) => post(out, "owner-form", "owner", { owner: ownerInput.value.trim() || null, author: session.name() }),
  );

  render(view, 
    h("h1", null, h("span", { class: "number" }, tk.number), " ", h("span", { id: "ticket-subject" }, tk.subject)),
    h(
      "dl",
      { class: "meta", id: "ticket-status" },
      h("dt", null, t("type")),
      h("dd", null, label(tk.labels.type, tk.type)),
      h("dt", null, t("status")),
      h("dd", { id: "ticket-status-value" }, badge(tk.status, label(tk.labels.status, tk.status_label))),
      h("dt", null, t("priority")),
      h("dd", { id: "ticket-priority-value" }, badge("p-" + tk.priority, label(tk.labels.priority, tk.priority))),
      h("dt", null, t("owner")),
      h("dd", { id: "ticket-owner-value" }, tk.owner ?? "—"),
      h("dt", null, t("tenant")),
      h("dd", null, tk.tenant ?? "—"),
      h("dt", null, t("source")),
      h("dd", null, tk.source),
      tk.rollout_id ? [h("dt", null, t("rollout")), h("dd", null, link(`rollout ${tk.rollout_id}`, "rollouts", tk.rollout_id))] : null,
      h("dt", null, t("opened / updated")),
      h("dd", null, `${fmtTime(tk.created_at)} / ${fmtTime(tk.updated_at)}`),
    ),
    tk.parent ? h("p", null, t("Part of mass incident "), link(tk.parent.number, "incidents", tk.parent.number), " — ", tk.parent.subject) : null,
    tk.description ? [h("h2", null, t("Description")), h("div", { class: "description" }, tk.description)] : null,
    tk.children.length ? [h("h2", null, `${t("Tenant incidents")} (${tk.children.length})`), h("ul", null, tk.children.map(ref))] : null,
    tk.attachments.length
      ? [
          h("h2", null, t("Attachments")),
          h(
            "ul",
            { id: "attachments" },
            tk.attachments.map((a) => {
              const out = h("span", { class: "field-msg", "aria-live": "polite" });
              return h("li", null, h("button", { type: "button", class: "link", onclick: () => download(tk.number, a, out) }, a.filename), ` ${a.content_type}, ${a.size} bytes, ${a.author}, ${fmtTime(a.created_at)} `, out);
            }),
          ),
        ]
      : null,
    h("h2", null, t("Timeline")),
    h("ol", { id: "timeline", class: "timeline" }, tk.events.map((e) => eventItem(e, tk.description))),
    h("div", { class: "forms" }, commentForm, statusForm, priorityForm, ownerForm),
    h("p", null, link(t("← all incidents"), "incidents")),
  );
  if (saved) {
    const out = view.querySelector(`#${saved}-msg`);
    out?.append(message("info", t("Saved.")));
    out?.scrollIntoView({ block: "nearest" });
  }
}
