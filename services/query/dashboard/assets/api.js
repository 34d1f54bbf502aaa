// The dashboard's only way to the server: the public auth and query APIs, with a Bearer token.
// The session (access + refresh token) lives in sessionStorage: it ends with the tab. A 401 is
// answered by one refresh (POST /api/user/refresh) and a retry; if that fails, the user signs in again.

const SESSION = "analytics.session";
let session = null;
try { session = JSON.parse(sessionStorage.getItem(SESSION) || "null"); } catch { session = null; }
const listeners = new Set();

export function signedIn() { return Boolean(session && session.access_token); }
export function onSessionChange(fn) { listeners.add(fn); }

export function setSession(pair) {
  session = pair ? { access_token: pair.access_token, refresh_token: pair.refresh_token } : null;
  try {
    if (session) sessionStorage.setItem(SESSION, JSON.stringify(session));
    else sessionStorage.removeItem(SESSION);
  } catch { /* storage blocked: keep it in memory only */ }
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
async function refresh() {
  if (!session || !session.refresh_token) return false;
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const r = await fetch("/api/user/refresh", {
          method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify({ refresh_token: session.refresh_token }),
        });
        if (!r.ok) return false;
        setSession(await r.json());
        return true;
      } catch { return false; }
    })().finally(() => { setTimeout(() => { refreshing = null; }, 0); });
  }
  return refreshing;
}

export async function api(path, { method = "GET", body, params, auth = true, fresh = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  for (let attempt = 0; ; attempt++) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (auth && session) headers.authorization = `Bearer ${session.access_token}`;
    if (fresh) headers["cache-control"] = "no-cache";
    let r;
    try {
      r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "the server cannot be reached; check your connection");
    }
    if (r.status === 401 && auth && attempt === 0 && (await refresh())) continue;
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

export async function logout() {
  try { await api("/api/user/logout", { method: "POST", body: { refresh_token: session && session.refresh_token } }); }
  catch { /* signed out locally anyway */ }
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
    if (session) headers.authorization = `Bearer ${session.access_token}`;
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
