// The public dashboard of a shared link (/dashboard/share/<token>): an app's stats, read-only, no account.
// The link's token reads GET /api/analytics/stats/* only (header x-shared-link); a link with a password
// first trades it, with the password, for a short-lived token (POST /api/auth/shared-links/unlock), kept
// for this tab only.
import { h, fmt, announce } from "./dom.js";
import { lineChart } from "./charts.js";

const main = document.getElementById("main");
const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const UNLOCKED = `analytics.share.${token.slice(0, 6)}`;
let credential = token;
try { credential = sessionStorage.getItem(UNLOCKED) || token; } catch { /* the link's token alone */ }

class Refused extends Error {
  constructor(status, detail) { super(detail || `HTTP ${status}`); this.status = status; }
}

async function call(path, { params = {}, method = "GET", body, headers = {} } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const r = await fetch(url, { method, headers: { accept: "application/json", ...(body ? { "content-type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Refused(r.status, data && typeof data.detail === "string" ? data.detail : "");
  return data;
}

const stats = (what, params) => call(`/api/analytics/stats/${what}`, { params, headers: { "x-shared-link": credential } });

const PERIODS = [["day", "Today"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["month", "This month"], ["6mo", "Last 6 months"], ["12mo", "Last 12 months"]];
const METRICS = [["visitors", "Unique visitors", fmt.num], ["visits", "Visits", fmt.num], ["pageviews", "Pageviews", fmt.num],
  ["bounce_rate", "Bounce rate", fmt.pct], ["visit_duration", "Visit duration", fmt.duration]];
const BREAKDOWNS = [["page", "Top pages"], ["source", "Top sources"], ["device", "Devices"], ["country", "Countries"]];

function passwordForm(message) {
  const form = h("form", { class: "stack", "aria-labelledby": "pw-title" },
    message ? h("div", { class: "error", role: "alert" }, message) : null,
    h("label", { for: "share-pw" }, "Password", h("input", { id: "share-pw", name: "password", type: "password", required: true, autocomplete: "current-password" })),
    h("button", { type: "submit" }, "Show the stats"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await call("/api/auth/shared-links/unlock", { method: "POST", body: { token, password: new FormData(form).get("password") } });
      credential = r.access_token;
      try { sessionStorage.setItem(UNLOCKED, credential); } catch { /* this page only */ }
      render();
    } catch (err) { main.replaceChildren(passwordForm(err.status === 401 ? "Wrong password." : err.message)); }
  });
  return h("section", { class: "card narrow" }, h("h1", { id: "pw-title" }, "This dashboard needs a password"), form);
}

function table(property, rows) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing yet for this range.");
  return h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, property), h("th", { scope: "col", class: "num" }, "visitors"))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, h("td", {}, r[property] === "" || r[property] === null ? "(none)" : String(r[property])), h("td", { class: "num" }, fmt.num(r.visitors))))));
}

async function render() {
  const period = new URLSearchParams(location.search).get("period") || "30d";
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  let summary;
  try {
    summary = await stats("aggregate", { period, tz, metrics: METRICS.map(([k]) => k).join(",") });
  } catch (err) {
    if (err.status === 401 && /password|expired/.test(err.message)) {
      try { sessionStorage.removeItem(UNLOCKED); } catch { /* nothing kept */ }
      credential = token;
      main.replaceChildren(passwordForm(/expired/.test(err.message) ? "Your session of this dashboard ended; enter the password again." : ""));
      return;
    }
    main.replaceChildren(h("section", { class: "card narrow" }, h("h1", {}, "This link does not work"),
      h("p", { class: "error", role: "alert" }, err.status === 401 ? "It was revoked, or it is not a shared link. Ask its owner for a new one." : err.message)));
    return;
  }
  const select = h("select", { id: "period", onchange: (e) => { history.replaceState(null, "", `?period=${e.target.value}`); render(); } },
    ...PERIODS.map(([v, l]) => h("option", { value: v, selected: v === period }, l)));
  const interval = period === "day" ? "hour" : ["6mo", "12mo"].includes(period) ? "month" : "day";
  const [series, ...tops] = await Promise.all([
    stats("timeseries", { period, tz, interval, metrics: "visitors,pageviews" }),
    ...BREAKDOWNS.map(([property]) => stats("breakdown", { period, tz, property, metrics: "visitors", limit: 10 })),
  ]);
  const xFormat = (d) => (interval === "hour" ? String(d).slice(11, 16) : interval === "month" ? String(d).slice(0, 7) : String(d).slice(5, 10));
  main.replaceChildren(h("div", {},
    h("h1", {}, "Site stats"),
    h("div", { class: "row", style: { marginBottom: ".8rem" } }, h("div", { class: "field" }, h("label", { for: "period" }, "Date range"), select)),
    h("section", { class: "card", "aria-labelledby": "sum-title" }, h("h2", { id: "sum-title" }, "Summary"),
      h("ul", { class: "metrics", "aria-label": "Key numbers" }, ...METRICS.map(([key, label, f]) => h("li", { class: "metric", "data-metric": key },
        h("div", { class: "label" }, label), h("div", { class: "value" }, f((summary.results[key] || {}).value)))))),
    h("section", { class: "card", "aria-labelledby": "ts-title" }, h("h2", { id: "ts-title" }, "Visitors and pageviews"),
      lineChart(series.results || [], [{ key: "visitors", label: "Visitors" }, { key: "pageviews", label: "Pageviews" }], { label: "Visitors and pageviews over time", xFormat })),
    h("div", { class: "grid2" }, ...BREAKDOWNS.map(([property, title], i) => h("section", { class: "card", id: `top-${property}` },
      h("h2", {}, title), table(property, tops[i].results || []))))));
  announce("Stats loaded");
}

render();
