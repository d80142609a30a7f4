// DOM helpers. Data from the API only ever becomes text nodes or attribute values: nothing
// here parses HTML, so customer text (comments, evidence) cannot inject markup or scripts.
import { t } from "./i18n.js";

/** h("a", {href: "#/x", class: "c", onclick: fn}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the children of `el` (strings become text; arrays are flattened). */
export function render(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Refresh a data region: like `render`, but the <details> the user opened or closed in it
 * keep that state (matched by their summary text and its occurrence) and the scroll position
 * is kept. */
export function update(el, ...children) {
  const states = () => {
    const seen = {};
    return [...el.querySelectorAll("details")].map((d) => {
      const text = d.dataset.key || d.querySelector("summary")?.textContent || "";
      seen[text] = (seen[text] || 0) + 1;
      return [`${text}#${seen[text]}`, d];
    });
  };
  const before = new Map(states().map(([key, d]) => [key, d.open]));
  const { scrollX, scrollY } = window;
  render(el, ...children);
  for (const [key, d] of states()) if (before.has(key)) d.open = before.get(key);
  window.scrollTo(scrollX, scrollY);
  return el;
}

/** A confirmation in the page (a modal <dialog>): resolves true on the confirm button, false
 * on Cancel or Escape. `lines` are shown as paragraphs (text only). */
export function confirmDialog(title, lines, confirmText, { danger = false } = {}) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      lines.map((line) => (line instanceof Node ? line : h("p", null, line))),
    );
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    dialog.append(
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: danger ? "danger" : "", onclick: () => done(true) }, confirmText),
        h("button", { type: "button", class: "secondary", onclick: () => done(false) }, t("Cancel")),
      ),
    );
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.secondary").focus();
  });
}

/** A link to a page of this UI; the parts are URI-encoded. */
export function link(text, ...parts) {
  return h("a", { href: "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/") }, text);
}

const ISO_TIME = /^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([zZ]|[+-]\d\d:?\d\d)?$/;

/** Whether `value` is an API time (ISO 8601; naive times are UTC). */
export function isTime(value) {
  return typeof value === "string" && ISO_TIME.test(value);
}

// Every time on every page is shown in the user's time zone (the browser's), named in the header.
const PARTS = new Intl.DateTimeFormat("en-GB", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});

/** The user's time zone as shown in the header: "Europe/Moscow (UTC+03:00)". */
export function zoneLabel(at = new Date()) {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  const off = -at.getTimezoneOffset();
  const abs = Math.abs(off);
  const hhmm = `${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
  return `${zone} (UTC${off < 0 ? "-" : "+"}${hhmm})`;
}

/** A Date as "2026-05-01 13:02:03" in the user's time zone; `short`: "05-01 13:02" or "13:02". */
export function fmtDate(d, short) {
  const p = Object.fromEntries(PARTS.formatToParts(d).map((x) => [x.type, x.value]));
  if (short === "day") return `${p.month}-${p.day} ${p.hour}:${p.minute}`;
  if (short === "clock") return `${p.hour}:${p.minute}`;
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

/** An API time (naive times are UTC) in the user's time zone; absent or zero times
 * (Docker's "0001-01-01T00:00:00Z" for "never") are "—". */
export function fmtTime(value) {
  if (!value) return "—";
  const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : value + "Z";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(value);
  if (d.getUTCFullYear() <= 1) return "—";
  return fmtDate(d);
}

export function fmtPct(value) {
  if (value === null || value === undefined) return "—";
  const pct = value * 100;
  return (pct === 100 ? "100" : pct.toFixed(pct >= 99 ? 3 : 2)) + " %";
}

/** A status badge: class by value, text as given. */
export function badge(status, text) {
  return h("span", { class: "badge s-" + String(status).replace(/[^a-z_]/gi, "") }, text ?? status);
}

/** A <pre> with JSON (as text). */
export function jsonBlock(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", null, h("tr", null, headers.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", null, rows),
  );
}

export function message(kind, text) {
  return h("p", { class: "msg " + kind, role: kind === "error" ? "alert" : "status" }, text);
}

export function splitList(text) {
  return String(text)
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}
