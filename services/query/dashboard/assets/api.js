// The dashboard's only way to the server: the public auth and query APIs, with a Bearer token.
// The access token lives in this page's memory only. The refresh token is in an httpOnly,
// SameSite=Strict cookie that only POST /api/user/refresh receives (script never sees it), so a new
// tab or a reload signs in again by calling refresh (`restoreSession`), and a 401 is answered by one
// refresh and a retry; if that fails, the user signs in again. Refreshes of every tab of the dashboard
// take turns (Web Locks): the cookie's token rotates, and two tabs spending the same one at once would
// look like a stolen token to the server, which then ends the session.

let access = null;
const listeners = new Set();

export function signedIn() { return Boolean(access); }
export function onSessionChange(fn) { listeners.add(fn); }

export function setSession(pair) {
  access = pair ? pair.access_token : null; // the refresh token in `pair` is dropped: the cookie has it
  listeners.forEach((fn) => fn(signedIn()));
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(detail) || `HTTP ${status}`);
    this.status = status;
  }
}

function describe(detail) {
  if (!detail) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}` : String(d))).join("; ");
  }
  return JSON.stringify(detail);
}

let refreshing = null;
async function refreshOnce() {
  try {
    const r = await fetch("/api/user/refresh", {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" }, body: "{}",
    });
    if (!r.ok) { if (access) setSession(null); return false; }
    setSession(await r.json());
    return true;
  } catch { return false; }
}

function refresh() {
  if (!refreshing) {
    const turn = navigator.locks ? navigator.locks.request("analytics.refresh", refreshOnce) : refreshOnce();
    refreshing = turn.finally(() => { setTimeout(() => { refreshing = null; }, 0); });
  }
  return refreshing;
}

// On load: a session from another tab or before the reload continues, if the cookie's is still alive.
export async function restoreSession() { return access ? true : refresh(); }

export async function api(path, { method = "GET", body, params, auth = true, fresh = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  for (let attempt = 0; ; attempt++) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (auth && access) headers.authorization = `Bearer ${access}`;
    if (fresh) headers["cache-control"] = "no-cache";
    let r;
    try {
      r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "the server cannot be reached; check your connection");
    }
    if (r.status === 401 && auth && access && attempt === 0 && (await refresh())) continue;
    if (r.status === 401 && auth) setSession(null);
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) {
      let detail = data && data.detail;
      if (r.status === 429 || r.status === 503) detail = `${describe(detail) || "busy"} (try again in ${r.headers.get("retry-after") || "a few"} s)`;
      throw new ApiError(r.status, detail);
    }
    return data;
  }
}

export async function login(username, password) {
  setSession(await api("/api/user/login", { method: "POST", body: { username, password }, auth: false }));
}

// Sign-in through an OpenID provider (such as Google) is a browser navigation: /api/user/oidc/login,
// the provider, then /api/user/oidc/callback, which sends the browser to #/oidc with a one-time,
// httpOnly hand-off cookie. Here that hand-off becomes the same session a password login gives.
export async function oidcSignIn() {
  setSession(await api("/api/user/oidc/session", { method: "POST", auth: false }));
}

let oidc = null;
export function oidcConfig() {
  if (!oidc) oidc = api("/api/user/oidc/config", { auth: false }).catch(() => ({ enabled: false }));
  return oidc;
}

export async function logout() {
  try { await api("/api/user/logout", { method: "POST" }); } catch { /* signed out locally anyway */ }
  setSession(null);
}

// A CSV download of a report (`format=csv`): fetched with the session's token (a plain link would carry
// none), then saved under the name the server gives.
export async function download(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries({ ...(params || {}), format: "csv" })) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  for (let attempt = 0; ; attempt++) {
    const headers = { accept: "text/csv" };
    if (access) headers.authorization = `Bearer ${access}`;
    const r = await fetch(url, { headers });
    if (r.status === 401 && attempt === 0 && (await refresh())) continue;
    if (!r.ok) {
      const data = await r.json().catch(() => null);
      throw new ApiError(r.status, data && data.detail);
    }
    const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || "export.csv";
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await r.blob());
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    return name;
  }
}
