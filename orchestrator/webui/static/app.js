// The shell: login, navigation (hash routes), one page at a time.
import { api, ApiError, session } from "./api.js";
import { h, message, render, zoneLabel } from "./dom.js";
import { fleetPage } from "./fleet.js";
import { lang, setLang, t } from "./i18n.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const langButton = document.getElementById("lang");
const logoutButton = document.getElementById("logout");
const flash = document.getElementById("flash");
const zone = document.getElementById("zone");

const lazy = (module, name) => async (...args) => (await import(module))[name](...args);
const ROUTES = [
  [/^fleet$/, "fleet", fleetPage],
  [/^rollouts$/, "rollouts", lazy("./rollouts.js", "rolloutsPage")],
  [/^rollouts\/(\d+)$/, "rollouts", lazy("./rollouts.js", "rolloutPage")],
  [/^incidents$/, "incidents", lazy("./incidents.js", "incidentsPage")],
  [/^incidents\/([^/]+)$/, "incidents", lazy("./incidents.js", "incidentPage")],
  [/^monitors$/, "monitors", lazy("./monitors.js", "monitorsPage")],
  [/^monitors\/(.+)$/, "monitors", lazy("./monitors.js", "monitorPage")],
  [/^postgres$/, "postgres", lazy("./postgres.js", "postgresPage")],
];

let current = null; // the running page's context

function showFlash(text) {
  flash.hidden = !text;
  flash.textContent = text || "";
}

// One language for page text and ticket labels, one time zone (shown here) for every time.
function header() {
  document.documentElement.lang = lang();
  langButton.textContent = lang() === "ru" ? "EN" : "RU";
  langButton.title = lang() === "ru" ? "Show the pages in English" : "Показать страницы по-русски";
  zone.textContent = `${t("Times in")} ${zoneLabel()}`;
  for (const a of nav.querySelectorAll("a")) a.textContent = t((a.dataset.text ||= a.textContent));
  logoutButton.textContent = t("Log out");
}

function loginPage() {
  nav.hidden = logoutButton.hidden = true;
  const note = session.takeFlash();
  const token = h("input", { id: "token", name: "token", type: "password", required: true, autocomplete: "current-password", size: 40 });
  const name = h("input", { id: "name", name: "name", autocomplete: "username", value: sessionStorage.getItem("cpdops.name") || "", placeholder: "ivanov" });
  const status = h("div", { "aria-live": "polite" }, note ? message("error", note) : null);
  const submit = async (event) => {
    event.preventDefault();
    render(status, message("info", t("Checking the token…")));
    try {
      await api("/api/v1/hosts", { token: token.value });
    } catch (err) {
      const text = err instanceof ApiError && err.status === 401 ? t("This token is not valid (401).") : err.message;
      render(status, message("error", text));
      return;
    }
    session.login(token.value, name.value.trim());
    location.hash = "#/fleet";
  };
  render(view, 
    h(
      "form",
      { class: "login card", onsubmit: submit, "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, t("Log in to cpdops")),
      h("label", { for: "token" }, t("API token")),
      token,
      h("label", { for: "name" }, t("Your name (shown on ticket timelines)")),
      name,
      h("button", { type: "submit" }, t("Log in")),
      status,
      h("p", { class: "muted" }, "Create a token with ", h("code", null, "cpdops token create --role operator"), "."),
    ),
  );
  token.focus();
}

async function route() {
  current?.leave();
  showFlash("");
  header();
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  if (path === "login" || !session.token()) {
    if (path !== "login") {
      location.replace("#/login");
      return;
    }
    loginPage();
    return;
  }
  nav.hidden = logoutButton.hidden = false;
  const match = ROUTES.map(([re, page, fn]) => [path.match(re), page, fn]).find(([m]) => m);
  if (!match) {
    location.replace("#/fleet");
    return;
  }
  const [m, page, fn] = match;
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const timers = new Set();
  const ctx = {
    alive: true,
    params: new URLSearchParams(location.hash.split("?")[1] || ""),
    leave() {
      ctx.alive = false;
      for (const t of timers) clearTimeout(t);
    },
    later(fn, ms) {
      const t = setTimeout(() => {
        timers.delete(t);
        if (ctx.alive) fn();
      }, ms);
      timers.add(t);
      return t;
    },
    cancel(t) {
      clearTimeout(t);
      timers.delete(t);
    },
    /** Live data: run `fn` every `ms` (each run after the last one ended) while the page is
     * shown, until it returns false. Pages refresh only their data regions with it (see
     * dom.js `update`): a form, a filter, a plan on the page is the user's and is never
     * rebuilt by a refresh. A failed run is retried at the next tick. */
    every(ms, fn) {
      const tick = async () => {
        let again = true;
        try {
          again = (await fn()) !== false;
        } catch (err) {
          if (err instanceof ApiError && err.status === 401) return;
        }
        if (again) ctx.later(tick, ms);
      };
      return ctx.later(tick, ms);
    },
  };
  current = ctx;
  render(view, h("p", { class: "muted" }, t("Loading…")));
  try {
    await fn(view, ctx, ...m.slice(1).map(decodeURIComponent));
  } catch (err) {
    if (ctx.alive && !(err instanceof ApiError && err.status === 401)) {
      render(view, message("error", err.message));
    }
  }
}

langButton.addEventListener("click", () => {
  setLang(lang() === "ru" ? "en" : "ru");
  route();
});
logoutButton.addEventListener("click", () => {
  session.logout("Logged out.");
  location.hash = "#/login";
});
window.addEventListener("hashchange", route);
route();
