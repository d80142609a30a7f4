// The REST API client: every request carries "Authorization: Bearer <token>".
const TOKEN = "cpdops.token";
const NAME = "cpdops.name";
const FLASH = "cpdops.flash";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  name: () => sessionStorage.getItem(NAME) || "operator",
  login(token, name) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(NAME, name || "operator");
  },
  logout(flash) {
    sessionStorage.removeItem(TOKEN);
    if (flash) sessionStorage.setItem(FLASH, flash);
  },
  takeFlash() {
    const text = sessionStorage.getItem(FLASH);
    sessionStorage.removeItem(FLASH);
    return text;
  },
};

/** A 4xx `detail` (a string, or FastAPI's list of field errors) as one line. */
export function describe(detail) {
  if (Array.isArray(detail)) {
    return detail
      .map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${e.msg}`)
      .join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

export async function api(path, { method = "GET", body, raw = false, token } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token ?? session.token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `cpdops does not answer (${err.message})`);
  }
  if (resp.status === 401 && token === undefined) {
    session.logout("Your token was not accepted (401): log in again.");
    location.hash = "#/login";
    throw new ApiError(401, "not logged in");
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      detail = describe((await resp.json()).detail);
    } catch {
      /* not JSON */
    }
    // A 403 keeps the server's reason ("this needs role operator; token … has role viewer").
    if (resp.status === 403) throw new ApiError(403, `Your role cannot do this (403): ${detail}`);
    throw new ApiError(resp.status, `${detail} (HTTP ${resp.status})`);
  }
  if (raw) return resp;
  return resp.status === 204 ? null : resp.json();
}
