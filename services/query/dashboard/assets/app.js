// The dashboard: a hash-routed single-page app over the public API (see docs/query-api.md).
import { api, ApiError, login, logout, oidcConfig, oidcSignIn, onSessionChange, restoreSession, setSession, signedIn } from "./api.js";
import { h, fmt, announce, copy, field, submitting } from "./dom.js";
import { settingsView, sharingView, teamsView, teamView, invitationView, pendingInvitation, teamPicker } from "./manage.js";
import { lineChart } from "./charts.js";
import { dropoffLinks, dropoffList, goalsView, savedFunnels, segmentPicker, segmentsView } from "./analysis.js";
import { annotationForm, downloadButton, marksFor, pathsView, realtimePanel, zonedStamp } from "./reports.js";
import { alertsView, webhooksView } from "./integrations.js";

const main = document.getElementById("main");
let renderId = 0;
let timers = [];
let profile = null;

// ---- routing ---------------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(qs || "") };
}

function go(path, query) {
  const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString() : "";
  const next = `#${path}${qs ? `?${qs}` : ""}`;
  if (location.hash === next) render(); // no hashchange: draw it again (signed in on this very route)
  else location.hash = next;
}

function appPath(appId, view) { return `/app/${encodeURIComponent(appId)}/${view}`; }

async function render() {
  const id = ++renderId;
  timers.forEach(clearInterval);
  timers = [];
  const { parts, query } = route();
  const stale = () => id !== renderId;
  if (parts[0] === "oidc") {  // back from the OpenID provider: pick the session up
    try {
      await oidcSignIn();
    } catch (err) {
      await renderAccount();
      return show(stale, "Sign in", loginView(query, err.message));
    }
    return go("/apps");
  }
  await renderAccount();
  if (parts[0] === "forgot") return show(stale, "Forgot your password", forgotView());
  if (parts[0] === "reset") return show(stale, "Choose a new password", resetView(query));
  if (!signedIn() && !["login", "signup"].includes(parts[0])) {
    if (parts[0] === "invitation") {
      return show(stale, "Sign in", loginView(new URLSearchParams({ next: "/invitation" }), "Sign in, or create an account with the invited email address, to join the team."));
    }
    return show(stale, "Sign in", loginView(query));
  }
  try {
    if (parts[0] === "login") return show(stale, "Sign in", loginView(query));
    if (parts[0] === "signup") return show(stale, "Create an account", signupView());
    if (parts[0] === "account") return show(stale, "Your account", accountView());
    if (parts[0] === "invitation") return show(stale, "Join a team", await invitationView(go));
    if (parts[0] === "teams" && parts[1]) return show(stale, "Team", await teamView(parts[1], go));
    if (parts[0] === "teams") return show(stale, "Your teams", await teamsView(go));
    if (parts[0] === "app" && parts[1]) {
      const appId = parts[1];
      const view = parts[2] || "overview";
      const apps = await api("/api/auth/apps");
      const app = apps.find((a) => a.app_id === appId);
      if (!app) return show(stale, "Not found", h("div", { class: "card" }, h("h1", {}, "Site not found"), h("p", {}, "It is not one of your sites. ", h("a", { href: "#/apps" }, "Back to your sites"))));
      const views = { overview, events: eventsView, users: usersView, funnels: funnelsView, retention: retentionView, keys: keysView,
        settings: settingsView, sharing: sharingView, goals: (a, q) => goalsView(ui, a, q), segments: (a, q) => segmentsView(ui, a, q),
        paths: (a, q) => pathsView(a, q, go, appPath, statsParams), realtime: (a) => h("div", {}, realtimePanel(a, timers)),
        webhooks: (a) => webhooksView(a, render), alerts: (a) => alertsView(a, render) };
      const build = (tabsFor(app).some(([v]) => v === view) && views[view]) || overview;
      const body = await build(app, query, parts.slice(3), stale);
      return show(stale, `${tabTitle(view)} · ${app.name}`, appShell(app, view, apps), body);
    }
    return show(stale, "Your sites", await appsView(query));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return show(stale, "Sign in", loginView(query, "Your session ended; sign in again."));
    return show(stale, "Error", h("div", { class: "error", role: "alert" }, `Something went wrong: ${err.message}`));
  }
}

function show(stale, title, ...nodes) {
  if (stale()) return;
  document.title = `${title} · Analytics`;
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
  announce(title);
}

const TABS = [["overview", "Overview"], ["realtime", "Realtime"], ["events", "Events"], ["users", "Users"], ["funnels", "Funnels"], ["retention", "Retention"], ["paths", "Paths"], ["goals", "Goals"], ["segments", "Segments"], ["keys", "Keys & snippet"], ["settings", "Settings"], ["sharing", "Sharing"], ["webhooks", "Webhooks"], ["alerts", "Alerts"]];
const ADMIN_TABS = new Set(["keys", "settings", "sharing", "webhooks", "alerts"]); // a viewer reads; admins and owners manage
function tabsFor(app) { return TABS.filter(([v]) => app.role !== "viewer" || !ADMIN_TABS.has(v)); }
function tabTitle(view) { return (TABS.find(([v]) => v === view) || TABS[0])[1]; }

function appShell(app, view, apps) {
  const picker = h("select", { id: "app-picker", onchange: (e) => go(appPath(e.target.value, view)) },
    ...apps.map((a) => h("option", { value: a.app_id, selected: a.app_id === app.app_id }, a.name)));
  return h("div", {},
    h("div", { class: "apphead" },
      h("div", {}, h("h1", {}, app.name), app.domain ? h("div", { class: "muted" }, app.domain) : null),
      apps.length > 1 ? h("div", { class: "field" }, h("label", { for: "app-picker" }, "Site"), picker) : null),
    h("nav", { "aria-label": "Site sections" }, h("ul", { class: "tabs" },
      ...tabsFor(app).map(([v, label]) => h("li", {}, h("a", { href: `#${appPath(app.app_id, v)}`, "aria-current": v === view ? "page" : null }, label))))));
}

async function renderAccount() {
  const nav = document.getElementById("account");
  if (!signedIn()) {
    profile = null;
    nav.replaceChildren(h("a", { href: "#/login" }, "Sign in"), h("a", { href: "#/signup" }, "Create account"));
    return;
  }
  if (!profile) {
    try { profile = await api("/api/user/get_user_profile"); } catch { profile = null; }
  }
  if (!signedIn()) return renderAccount();
  nav.replaceChildren(
    h("a", { href: "#/apps" }, "Your sites"),
    h("a", { href: "#/teams" }, "Teams"),
    profile ? h("span", { class: "hide-sm" }, `Signed in as ${profile.username}`) : null,
    h("a", { href: "#/account" }, "Account"),
    h("button", { type: "button", onclick: async () => { await logout(); go("/login"); } }, "Sign out"));
}

// ---- forms -------------------------------------------------------------------------------------

function loginView(query, message) {
  message = message || (query.get("reset") ? "Your password is changed: sign in with the new one." : null);
  const form = h("form", { class: "stack", "aria-labelledby": "login-title" },
    message ? h("div", { class: "notice" }, message) : null,
    field("Username or email", { name: "username", autocomplete: "username", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", submitting(form, async (data) => {
    await login(data.get("username"), data.get("password"));
    go(query.get("next") || "/apps");
  }));
  return h("section", { class: "card narrow" }, h("h1", { id: "login-title" }, "Sign in"), providerSignIn(), form,
    h("p", {}, h("a", { href: "#/forgot" }, "Forgot your password?")),
    h("p", {}, "New here? ", h("a", { href: "#/signup" }, "Create an account")));
}

function providerSignIn() {  // "Sign in with Google" (or the configured provider), when the server has one
  const holder = h("div", {});
  oidcConfig().then((config) => {
    if (config.enabled) {
      holder.replaceChildren(h("p", {}, h("a", { class: "button", id: "oidc-login", href: config.login_url }, `Sign in with ${config.provider_name}`)),
        h("p", { class: "muted" }, "or with your password:"));
    }
  });
  return holder;
}

const PASSWORD_RULES = "At least 8 characters, with upper and lower case letters, a digit and a special character.";

function forgotView() {
  const done = h("div", { role: "status" });
  const form = h("form", { class: "stack", "aria-labelledby": "forgot-title" },
    h("p", {}, "Enter the email address of your account: we mail you a link to choose a new password."),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    h("button", { type: "submit" }, "Send the link"));
  form.addEventListener("submit", submitting(form, async (data) => {
    const r = await api("/api/user/password-reset", { method: "POST", auth: false, body: { email: data.get("email") } });
    form.replaceChildren(h("p", { class: "ok", id: "forgot-sent" }, `Check your inbox: ${r.message}.`));
    announce("Reset link requested");
  }));
  return h("section", { class: "card narrow" }, h("h1", { id: "forgot-title" }, "Forgot your password"), done, form,
    h("p", {}, h("a", { href: "#/login" }, "Back to sign in")));
}

function resetView(query) {
  const token = query.get("token") || "";
  const form = h("form", { class: "stack", "aria-labelledby": "reset-title" },
    token ? null : h("div", { class: "error", role: "alert" }, "This link has no token: open the link from the mail again, or ask for a new one."),
    field("New password", { name: "new_password", type: "password", autocomplete: "new-password", required: true }),
    field("New password again", { name: "again", type: "password", autocomplete: "new-password", required: true }),
    h("p", { class: "muted" }, PASSWORD_RULES),
    h("button", { type: "submit" }, "Set the new password"));
  form.addEventListener("submit", submitting(form, async (data) => {
    if (data.get("new_password") !== data.get("again")) throw new Error("the two passwords differ");
    await api("/api/user/password-reset/confirm", { method: "POST", auth: false, body: { token, new_password: data.get("new_password") } });
    setSession(null); // every session ended with the reset
    go("/login", { reset: 1 });
  }));
  return h("section", { class: "card narrow" }, h("h1", { id: "reset-title" }, "Choose a new password"), form,
    h("p", {}, h("a", { href: "#/forgot" }, "Ask for a new link")));
}

function accountView() {
  const change = h("form", { class: "stack", "aria-labelledby": "password-title" },
    field("Current password", { id: "current-password", name: "current_password", type: "password", autocomplete: "current-password", required: true }),
    field("New password", { id: "new-password", name: "new_password", type: "password", autocomplete: "new-password", required: true }),
    h("p", { class: "muted" }, PASSWORD_RULES, " Your other sessions (other browsers and devices) are signed out."),
    h("button", { type: "submit" }, "Change password"));
  change.addEventListener("submit", submitting(change, async (data) => {
    await api("/api/user/password", { method: "POST", body: { current_password: data.get("current_password"), new_password: data.get("new_password") } });
    change.reset();
    const box = change.querySelector(".error");
    if (box) box.remove();
    change.prepend(h("p", { class: "ok", id: "password-changed", role: "status" }, "Password changed; your other sessions are signed out."));
  }));
  const remove = h("form", { class: "stack", "aria-labelledby": "delete-title" },
    h("p", {}, "This deletes your account and your sites: their keys stop working at once and every event they collected is deleted. It cannot be undone."),
    field("Your password", { id: "delete-password", name: "password", type: "password", autocomplete: "current-password" }),
    h("label", { for: "delete-confirm", class: "check" }, h("input", { id: "delete-confirm", name: "confirm", type: "checkbox", required: true }),
      " I understand that my sites and their data are deleted for good"),
    h("button", { type: "submit", class: "danger" }, "Delete my account"));
  remove.addEventListener("submit", submitting(remove, async (data) => {
    if (!data.get("confirm")) throw new Error("tick the box to confirm");
    const password = data.get("password");
    await api("/api/user/me", { method: "DELETE", body: password ? { password } : {} });
    setSession(null);
    main.replaceChildren(h("section", { class: "card narrow" }, h("h1", {}, "Your account is deleted"),
      h("p", { id: "account-deleted" }, "Your sites, their keys and their events are gone. ", h("a", { href: "#/signup" }, "Create a new account"))));
    announce("Account deleted");
    await renderAccount();
  }));
  return h("div", {},
    h("h1", {}, "Your account"),
    profile ? h("p", { class: "muted" }, `${profile.username} · ${profile.email}`) : null,
    h("section", { class: "card", "aria-labelledby": "password-title" }, h("h2", { id: "password-title" }, "Change password"), change),
    h("section", { class: "card", "aria-labelledby": "delete-title" }, h("h2", { id: "delete-title" }, "Delete account"), remove));
}

function signupView() {
  const form = h("form", { class: "stack", "aria-labelledby": "signup-title" },
    field("Username", { name: "username", autocomplete: "username", required: true, minlength: 3, maxlength: 40 }),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "new-password", required: true }),
    h("button", { type: "submit" }, "Create account"));
  form.addEventListener("submit", submitting(form, async (data) => {
    await api("/api/user/signup", { method: "POST", auth: false, body: { username: data.get("username"), email: data.get("email"), password: data.get("password") } });
    await login(data.get("username"), data.get("password"));
    if (pendingInvitation()) go("/invitation"); else go("/apps", { welcome: 1 });
  }));
  return h("section", { class: "card narrow" }, h("h1", { id: "signup-title" }, "Create an account"), form,
    h("p", {}, "Already have one? ", h("a", { href: "#/login" }, "Sign in")));
}

// ---- sites and keys --------------------------------------------------------------------------

const WRITE_KEYS = "analytics.writeKeys"; // publishable keys only (they sit in every tracked page anyway)
function knownWriteKey(appId) {
  try { return JSON.parse(localStorage.getItem(WRITE_KEYS) || "{}")[appId] || null; } catch { return null; }
}
function rememberWriteKey(appId, key) {
  try {
    const all = JSON.parse(localStorage.getItem(WRITE_KEYS) || "{}");
    if (key) all[appId] = key; else delete all[appId];
    localStorage.setItem(WRITE_KEYS, JSON.stringify(all));
  } catch { /* not remembered */ }
}

// The queue stub: analytics.track() and friends work inline before the deferred script has loaded (it
// replays the queued calls in order). The same line as in README.md and script.js.
const QUEUE_STUB = '<script>window.analytics=window.analytics||[];["track","page","identify","reset"].forEach(function(m){analytics[m]=analytics[m]||function(){analytics.push([m].concat([].slice.call(arguments)))}})</script>';

function snippetText(writeKey) {
  return `${QUEUE_STUB}
<script defer src="${location.origin}/js/script.js" data-key="${writeKey || "YOUR_WRITE_KEY"}"></script>`;
}

function secretRow(label, value, id) {
  const button = h("button", { type: "button", class: "secondary", "aria-label": `Copy ${label}` }, "Copy");
  button.addEventListener("click", () => copy(value, button));
  return h("div", {}, h("div", { id: `${id}-label` }, h("strong", {}, label)),
    h("div", { class: "secret" }, h("code", { id, "aria-labelledby": `${id}-label` }, value), button));
}

function snippetBlock(writeKey) {
  const text = snippetText(writeKey);
  const button = h("button", { type: "button", class: "secondary" }, "Copy snippet");
  button.addEventListener("click", () => copy(text, button));
  return h("div", { class: "snippet" },
    h("p", {}, "Paste this into the <head> of every page of your site:"),
    h("pre", { id: "snippet", tabindex: "0", "aria-label": "Embed snippet" }, text), button,
    h("p", {}, "The first line lets your pages call analytics.track() before the script has loaded: the calls wait and are sent, in order, once it has."),
    h("details", {}, h("summary", {}, "Custom events, users and options"),
      h("pre", {}, `<button onclick="analytics.track('signup_click', {plan: 'pro'})">Sign up</button>
analytics.identify('user-42')      // later events carry this userId
// data-respect-dnt         : send nothing when the browser asks not to be tracked
// data-api="https://host"  : send events to another host
// data-hash                : count #hash changes as page views
// data-manual              : no automatic page views; call analytics.page()`)));
}

function newKeysPanel(title, keys) {
  return h("section", { class: "card ok", "aria-labelledby": "new-keys-title", id: "new-keys" },
    h("h2", { id: "new-keys-title" }, title),
    h("p", {}, h("strong", {}, "Copy the secret key now: it is shown only once."), " The write key is publishable: it goes into your pages."),
    secretRow("Secret key (read + ingest, keep it on servers)", keys.api_key, "secret-key"),
    secretRow("Write key (ingest only, for browsers)", keys.write_key, "write-key"),
    snippetBlock(keys.write_key));
}

async function appsView(query) {
  const apps = await api("/api/auth/apps");
  const holder = h("div", {});
  const form = h("form", { class: "row", "aria-labelledby": "register-title" },
    h("div", { class: "field" }, h("label", { for: "app-name" }, "Site name"), h("input", { id: "app-name", name: "name", required: true, maxlength: 120, placeholder: "My blog" })),
    h("div", { class: "field" }, h("label", { for: "app-domain" }, "Domain (optional)"), h("input", { id: "app-domain", name: "domain", maxlength: 253, placeholder: "blog.example.com" })),
    await teamPicker(),
    h("button", { type: "submit" }, "Add site"));
  form.addEventListener("submit", submitting(form, async (data) => {
    const made = await api("/api/auth/register", { method: "POST", body: { name: data.get("name"), domain: data.get("domain") || null, team_id: data.get("team_id") || null } });
    rememberWriteKey(made.app_id, made.write_key);
    form.reset();
    holder.replaceChildren(newKeysPanel(`${made.name} is ready`, made),
      h("p", {}, h("a", { class: "button", href: `#${appPath(made.app_id, "overview")}` }, `Open ${made.name}'s dashboard`)));
    announce(`${made.name} added; copy its keys now`);
    list.replaceWith(list = appList(await api("/api/auth/apps")));
  }));
  let list = appList(apps);
  return h("div", {},
    h("h1", {}, "Your sites"),
    query.get("welcome") ? h("p", { class: "ok" }, "Welcome! Add your first site to get its tracking snippet.") : null,
    holder,
    list,
    h("section", { class: "card", "aria-labelledby": "register-title" }, h("h2", { id: "register-title" }, "Add a site"), form));
}

function appList(apps) {
  if (!apps.length) return h("p", { class: "muted", id: "apps" }, "No sites yet.");
  return h("ul", { class: "applist", id: "apps", "aria-label": "Sites" }, ...apps.map((a) => h("li", {},
    h("h2", {}, h("a", { href: `#${appPath(a.app_id, "overview")}` }, a.name)),
    h("div", { class: "muted" }, a.domain || "no domain set", " · added ", fmt.time(a.created_at), a.team_id ? ` · team site, you are ${a.role}` : ""),
    h("div", { class: "links" }, h("a", { href: `#${appPath(a.app_id, "events")}` }, "Events"), a.role === "viewer" ? null : h("a", { href: `#${appPath(a.app_id, "keys")}` }, "Keys & snippet")))));
}

async function keysView(app) {
  const holder = h("div", {});
  const meta = await api("/api/auth/api-key", { params: { app_id: app.app_id } });
  const refresh = () => render();
  const table = h("table", {},
    h("caption", { class: "sr-only" }, "API keys of this site"),
    h("thead", {}, h("tr", {}, ...["Kind", "Key", "Created", "Expires", "Last used", "Status", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...meta.keys.map((k) => h("tr", { "data-key-id": k.key_id },
      h("td", {}, k.kind === "secret" ? "Secret" : "Write"),
      h("td", {}, h("code", {}, `${k.prefix}…`)),
      h("td", {}, fmt.time(k.created_at)),
      h("td", {}, k.expires_at ? fmt.time(k.expires_at) : "never"),
      h("td", {}, k.last_used_at ? fmt.time(k.last_used_at) : "never"),
      h("td", { class: "key-status" }, k.revoked ? `Revoked ${fmt.time(k.revoked_at)}` : "Active"),
      h("td", {}, k.revoked ? null : h("button", {
        type: "button", class: "danger", "aria-label": `Revoke ${k.kind} key ${k.prefix}`,
        onclick: async (e) => {
          if (!confirm(`Revoke the ${k.kind} key ${k.prefix}…? Anything using it stops working at once.`)) return;
          e.target.disabled = true;
          try { await api("/api/auth/revoke", { method: "POST", body: { key_id: k.key_id } }); announce("Key revoked"); refresh(); }
          catch (err) { holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)); e.target.disabled = false; }
        },
      }, "Revoke"))))));
  const regenerate = h("button", { type: "button", onclick: async () => {
    if (!confirm("Issue new keys and revoke the current ones? Update your site and servers with the new keys.")) return;
    regenerate.disabled = true;
    try {
      const made = await api("/api/auth/regenerate", { method: "POST", body: { app_id: app.app_id } });
      rememberWriteKey(app.app_id, made.write_key);
      const fresh = await keysView(app);
      main.querySelector("#keys-view").replaceWith(fresh);
      fresh.querySelector("#keys-holder").replaceChildren(newKeysPanel("New keys issued", made));
      announce("New keys issued; copy them now");
    } catch (err) { holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)); regenerate.disabled = false; }
  } }, "Regenerate keys");
  const revokeAll = h("button", { type: "button", class: "danger", onclick: async () => {
    if (!confirm("Revoke every key of this site? Tracking and API reads stop until you regenerate keys.")) return;
    try { await api("/api/auth/revoke", { method: "POST", body: { app_id: app.app_id } }); rememberWriteKey(app.app_id, null); announce("All keys revoked"); refresh(); }
    catch (err) { holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)); }
  } }, "Revoke all keys");
  const writeKey = knownWriteKey(app.app_id);
  const activeWrite = meta.keys.some((k) => k.kind === "write" && !k.revoked && writeKey && writeKey.startsWith(k.prefix));
  Object.assign(holder, { id: "keys-holder" });
  return h("div", { id: "keys-view" },
    holder,
    h("section", { class: "card", "aria-labelledby": "snippet-title" }, h("h2", { id: "snippet-title" }, "Tracking snippet"),
      activeWrite ? snippetBlock(writeKey)
        : h("div", {}, h("p", { class: "notice" }, "This browser does not know the current write key (full keys are shown only when issued). Regenerate keys to get a new one, or fill in the one you saved."), snippetBlock(null))),
    h("section", { class: "card", "aria-labelledby": "keys-title" }, h("h2", { id: "keys-title" }, "API keys"),
      h("div", { class: "tablewrap" }, table),
      h("div", { class: "row", style: { marginTop: ".8rem" } }, regenerate, revokeAll),
      h("p", { class: "muted" }, "Secret keys (sk_…) read your data and send events from servers: keep them private. Write keys (wk_…) only send events and belong in your pages.")));
}

// ---- overview ----------------------------------------------------------------------------------

const PERIODS = [["day", "Today"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["month", "This month"], ["6mo", "Last 6 months"], ["12mo", "Last 12 months"], ["custom", "Custom range"]];
const FILTERS = ["page", "entry_page", "exit_page", "source", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "device", "browser", "os", "country", "event_name"];
const LABELS = { referrer_url: "Referrer", outbound_link: "Outbound link", file_download: "File", page: "Page", entry_page: "Entry page", exit_page: "Exit page", source: "Source", referrer: "Referrer", device: "Device", browser: "Browser", os: "OS", country: "Country", event_name: "Event", utm_source: "UTM source", utm_medium: "UTM medium", utm_campaign: "UTM campaign", utm_term: "UTM term", utm_content: "UTM content" };

function statsParams(app, query) {
  const period = query.get("period") || "30d";
  // No tz: every day boundary is the site's time zone (its settings), whoever looks.
  const p = { app_id: app.app_id, period };
  if (period === "custom" && query.get("from") && query.get("to")) p.date = `${query.get("from")},${query.get("to")}`;
  for (const f of FILTERS) if (query.get(f)) p[f] = query.get(f);
  if (query.get("segment_id")) p.segment_id = query.get("segment_id");
  return p;
}

function withQuery(query, changes) {
  const next = Object.fromEntries(query.entries());
  for (const [k, v] of Object.entries(changes)) { if (v === null) delete next[k]; else next[k] = v; }
  return next;
}

function unavailable(err) {
  if (err instanceof ApiError && err.status === 404) return h("p", { class: "muted" }, "This report is not available on this server yet.");
  return h("p", { class: "error", role: "alert" }, err.message);
}

function periodControls(app, query, view) {
  const period = query.get("period") || "30d";
  const select = h("select", { id: "period", name: "period" }, ...PERIODS.map(([v, l]) => h("option", { value: v, selected: v === period }, l)));
  const today = new Date().toISOString().slice(0, 10);
  const from = h("input", { type: "date", id: "from", name: "from", value: query.get("from") || today, max: today });
  const to = h("input", { type: "date", id: "to", name: "to", value: query.get("to") || today, max: today });
  const custom = h("div", { class: "row", hidden: period !== "custom" },
    h("div", { class: "field" }, h("label", { for: "from" }, "From"), from),
    h("div", { class: "field" }, h("label", { for: "to" }, "To"), to));
  const form = h("form", { class: "row", "aria-label": "Date range" },
    h("div", { class: "field" }, h("label", { for: "period" }, "Date range"), select), custom,
    h("button", { type: "submit", class: "secondary" }, "Show"));
  select.addEventListener("change", () => {
    custom.hidden = select.value !== "custom";
    if (select.value !== "custom") go(appPath(app.app_id, view), withQuery(query, { period: select.value, from: null, to: null }));
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const custom = select.value === "custom";
    go(appPath(app.app_id, view), withQuery(query, { period: select.value, from: custom ? from.value : null, to: custom ? to.value : null }));
  });
  return form;
}

function filterChips(app, query) {
  const active = FILTERS.filter((f) => query.get(f));
  if (!active.length) return null;
  return h("div", { class: "chips", "aria-label": "Active filters" }, ...active.map((f) => h("span", { class: "chip" },
    `${LABELS[f]} is ${query.get(f)}`,
    h("button", { type: "button", "aria-label": `Remove filter ${LABELS[f]}`, onclick: () => go(appPath(app.app_id, "overview"), withQuery(query, { [f]: null })) }, "×"))));
}

const METRICS = [
  ["visitors", "Unique visitors", fmt.num, false], ["visits", "Visits", fmt.num, false], ["pageviews", "Pageviews", fmt.num, false],
  ["views_per_visit", "Views per visit", fmt.num, false], ["bounce_rate", "Bounce rate", fmt.pct, true], ["visit_duration", "Visit duration", fmt.duration, false],
];

function metricCards(results) {
  return h("ul", { class: "metrics", "aria-label": "Key numbers" }, ...METRICS.map(([key, label, f, lowerIsBetter]) => {
    const m = results[key] || {};
    const change = m.change;
    let changeEl = h("div", { class: "change muted" }, "no earlier data");
    if (change !== null && change !== undefined) {
      const better = lowerIsBetter ? change < 0 : change > 0;
      changeEl = h("div", { class: `change ${change === 0 ? "muted" : better ? "up" : "down"}` },
        `${change > 0 ? "▲" : change < 0 ? "▼" : ""} ${fmt.num(Math.abs(change))}% vs previous period`);
    }
    return h("li", { class: "metric", "data-metric": key },
      h("div", { class: "label", id: `m-${key}` }, label),
      h("div", { class: "value", "aria-describedby": `m-${key}` }, f(m.value)), changeEl);
  }));
}

function breakdownTable(app, query, property, rows) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing yet for this range.");
  const cols = Object.keys(rows[0]).filter((k) => k !== property && typeof rows[0][k] === "number");
  const max = Math.max(1, ...rows.map((r) => Number(r[cols[0]]) || 0));
  return h("div", { class: "tablewrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, LABELS[property]), ...cols.map((c) => h("th", { scope: "col", class: "num" }, c.replace(/_/g, " "))))),
    h("tbody", {}, ...rows.map((r) => {
      const value = r[property] === "" || r[property] === null ? "(none)" : String(r[property]);
      return h("tr", {},
        h("td", { class: "bar" }, h("span", { class: "fill", style: { width: `${(100 * (Number(r[cols[0]]) || 0)) / max}%` } }),
          h("span", { class: "txt" }, FILTERS.includes(property) && value !== "(none)" && !query.get(property)
            ? h("button", { type: "button", class: "link", title: `Filter by ${LABELS[property]} ${value}`, onclick: () => go(appPath(app.app_id, "overview"), withQuery(query, { [property]: value })) }, value)
            : value)),
        ...cols.map((c) => h("td", { class: "num" }, fmt.num(r[c]))));
    }))));
}

// `csv`: [path, params] of the report the panel shows, for its download button.
function panel(title, id, load, csv) {
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"));
  const section = h("section", { class: "card", "aria-labelledby": `${id}-title`, id },
    h("div", { class: "panelhead" }, h("h2", { id: `${id}-title` }, title), csv ? downloadButton(csv[0], csv[1], title) : null), body);
  load().then((node) => { body.replaceChildren(node); body.removeAttribute("aria-busy"); },
    (err) => { body.replaceChildren(unavailable(err)); body.removeAttribute("aria-busy"); });
  return section;
}

// What analysis.js (goals, properties, segments, saved funnels) uses of this module.
const ui = { go, appPath, withQuery, statsParams, periodControls, panel, unavailable, refresh: () => render() };

function intervalFor(period) { return period === "day" ? "hour" : ["6mo", "12mo"].includes(period) ? "month" : "day"; }

async function overview(app, query) {
  const params = statsParams(app, query);
  const realtime = h("span", { class: "live", id: "realtime" }, "… visitors now");
  const updateRealtime = async () => {
    try {
      const r = await api("/api/analytics/stats/realtime", { params: { app_id: app.app_id }, fresh: true });
      realtime.textContent = `${fmt.num(r.visitors)} ${r.visitors === 1 ? "visitor" : "visitors"} in the last 5 minutes`;
    } catch (err) { realtime.textContent = err.status === 404 ? "Realtime not available" : "Realtime: —"; }
  };
  updateRealtime();
  timers.push(setInterval(updateRealtime, 30000));
  const interval = intervalFor(params.period);
  const xFormat = (d) => (interval === "hour" ? String(d).slice(11, 16) : interval === "month" ? String(d).slice(0, 7) : String(d).slice(5, 10));
  const series = { ...params, interval, metrics: "visitors,pageviews" };
  const chart = async () => {
    const [r, notes] = await Promise.all([api("/api/analytics/stats/timeseries", { params: series }),
      api("/api/analytics/annotations", { params }).catch(() => ({ annotations: [] }))]);
    const rows = futureless(r.results || [], interval, app.timezone);
    const canWrite = ["owner", "admin"].includes(app.role || "owner");
    const holder = h("div", {});
    const draw = async () => {
      const fresh = await api("/api/analytics/annotations", { params }).catch(() => ({ annotations: [] }));
      holder.replaceChildren(lineChart(rows, [{ key: "visitors", label: "Visitors" }, { key: "pageviews", label: "Pageviews" }],
        { label: "Visitors and pageviews over time", xFormat, marks: marksFor(rows, fresh.annotations, app.timezone) }),
      fresh.annotations.length ? h("ul", { class: "notes", "aria-label": "Notes on the chart" }, ...fresh.annotations.map((n) => h("li", { "data-note": n.id },
        h("strong", {}, n.date || fmt.time(n.datetime)), ` ${n.text}`))) : null);
    };
    holder.append(lineChart(rows, [{ key: "visitors", label: "Visitors" }, { key: "pageviews", label: "Pageviews" }],
      { label: "Visitors and pageviews over time", xFormat, marks: marksFor(rows, notes.annotations, app.timezone) }));
    if (notes.annotations.length) await draw();
    return h("div", {}, holder, canWrite ? h("details", {}, h("summary", {}, "Add a note to the chart"), annotationForm(app, draw)) : null);
  };
  const breakdowns = [
    [[["page", "Top pages"], ["entry_page", "Entry pages"], ["exit_page", "Exit pages"]], "top-page"],
    [[["source", "Top sources"], ["utm_source", "UTM source"], ["utm_medium", "UTM medium"], ["utm_campaign", "UTM campaign"], ["utm_term", "UTM term"], ["utm_content", "UTM content"]], "top-source"],
    [[["device", "Devices"]], "top-device"], [[["browser", "Browsers"]], "top-browser"], [[["os", "Operating systems"]], "top-os"],
    [[["country", "Countries"]], "top-country"], [[["event_name", "Events"]], "top-event_name"],
    [[["outbound_link", "Outbound links"], ["file_download", "File downloads"]], "top-outbound_link"],
  ];
  if (query.get("source")) breakdowns.splice(2, 0, [[["referrer", `Referrers from ${query.get("source")}`]], "top-referrer"]);
  return h("div", {},
    h("div", { class: "row", style: { justifyContent: "space-between", marginBottom: ".8rem" } }, periodControls(app, query, "overview"),
      await segmentPicker(ui, app, query, "overview"), realtime),
    filterChips(app, query),
    panel("Summary", "summary", async () => {
      const r = await api("/api/analytics/stats/aggregate", { params: { ...params, compare: "previous_period" } });
      return h("div", {}, r.period ? h("p", { class: "muted" }, `${fmt.time(r.period.start)} – ${fmt.time(r.period.end)}`) : null, metricCards(r.results || {}));
    }, ["/api/analytics/stats/aggregate", params]),
    panel("Visitors and pageviews", "timeseries", chart, ["/api/analytics/stats/timeseries", series]),
    h("div", { class: "grid2" }, ...breakdowns.map(([choices, id]) => tabbedPanel(app, query, params, choices, id))));
}

// Today's buckets after the current one have no data yet: null, not zero (the chart stops at now). The
// buckets are the site's days and hours (its time zone), so is "now".
function futureless(rows, interval, tz) {
  const stamp = zonedStamp(new Date(), tz);
  const now = interval === "hour" ? `${stamp.slice(0, 13)}:00:00` : stamp.slice(0, 10);
  return rows.map((r) => (String(r.date) > now ? Object.fromEntries(Object.entries(r).map(([k, v]) => [k, k === "date" ? v : null])) : r));
}

// A breakdown panel with a tab per property (pages, entry and exit pages; sources and UTM tags).
function tabbedPanel(app, query, params, choices, id) {
  const [first, title] = choices[0];
  let current = first;
  const body = h("div", {});
  const metricsOf = (property) => (property === "event_name" ? "visitors,events" : ["outbound_link", "file_download"].includes(property) ? "visitors,events" : "visitors,pageviews");
  const paramsOf = (property) => ({ ...params, property, metrics: metricsOf(property), limit: 10 });
  const load = async (property) => {
    current = property;
    body.setAttribute("aria-busy", "true");
    try {
      const r = await api("/api/analytics/stats/breakdown", { params: paramsOf(property) });
      body.replaceChildren(breakdownTable(app, query, property, r.results || []));
    } catch (err) { body.replaceChildren(unavailable(err)); }
    body.removeAttribute("aria-busy");
    tabs.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.property === property)));
  };
  const tabs = choices.length > 1 ? h("div", { class: "subtabs", role: "group", "aria-label": `${title}: show` },
    ...choices.map(([property, label]) => h("button", { type: "button", class: "link", "data-property": property, "aria-pressed": String(property === first), onclick: () => load(property) }, label))) : h("div", {});
  const download = h("button", { type: "button", class: "secondary small download", "aria-label": `Download ${title} as CSV` }, "Download CSV");
  download.addEventListener("click", () => downloadButton("/api/analytics/stats/breakdown", paramsOf(current), title).click());
  load(first);
  return h("section", { class: "card", "aria-labelledby": `${id}-title`, id },
    h("div", { class: "panelhead" }, h("h2", { id: `${id}-title` }, title), download), tabs, body);
}

// ---- events explorer ---------------------------------------------------------------------------

async function eventsView(app, query) {
  const page = Number(query.get("page") || 1);
  const limit = 25;
  const filters = { event_name: query.get("event_name"), user_id: query.get("user_id"), start_date: query.get("start_date"), end_date: query.get("end_date") };
  const names = await api("/api/analytics/events/grouped", { params: { app_id: app.app_id, by: "event_name" } }).catch(() => ({ groups: [] }));
  const form = h("form", { class: "row", "aria-label": "Event filters" },
    h("div", { class: "field" }, h("label", { for: "ev-name" }, "Event name"), h("input", { id: "ev-name", name: "event_name", list: "ev-names", value: filters.event_name || "" })),
    h("datalist", { id: "ev-names" }, ...names.groups.map((g) => h("option", { value: g.key }))),
    h("div", { class: "field" }, h("label", { for: "ev-user" }, "User id"), h("input", { id: "ev-user", name: "user_id", value: filters.user_id || "" })),
    h("div", { class: "field" }, h("label", { for: "ev-start" }, "From"), h("input", { id: "ev-start", name: "start_date", type: "date", value: filters.start_date || "" })),
    h("div", { class: "field" }, h("label", { for: "ev-end" }, "To"), h("input", { id: "ev-end", name: "end_date", type: "date", value: filters.end_date || "" })),
    h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", class: "secondary", onclick: () => go(appPath(app.app_id, "events")) }, "Clear"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go(appPath(app.app_id, "events"), Object.fromEntries(new FormData(form).entries()));
  });
  let result;
  try {
    result = await api("/api/analytics/events", { params: { app_id: app.app_id, ...filters, page, limit }, fresh: true });
  } catch (err) {
    return h("div", {}, form, unavailable(err));
  }
  const pages = Math.max(1, Math.ceil(result.total / limit));
  const pageLink = (n, label) => h("a", { class: "button secondary", href: `#${appPath(app.app_id, "events")}?${new URLSearchParams({ ...Object.fromEntries(Object.entries(filters).filter(([, v]) => v)), page: n })}` }, label);
  return h("div", {},
    h("section", { class: "card" }, form),
    h("section", { class: "card", "aria-labelledby": "events-title" },
      h("div", { class: "panelhead" }, h("h2", { id: "events-title" }, h("span", { id: "events-total" }, fmt.num(result.total)), result.total === 1 ? " event" : " events"),
        downloadButton("/api/analytics/events", { app_id: app.app_id, ...filters }, "these events")),
      result.events.length ? h("div", { class: "tablewrap" }, h("table", {},
        h("caption", { class: "sr-only" }, "Events, newest first"),
        h("thead", {}, h("tr", {}, ...["Time", "Event", "Page", "Visitor", "Device", "Country", "Details"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, ...result.events.map((e) => h("tr", { "data-event": e.event_name },
          h("td", {}, fmt.time(e.timestamp)),
          h("td", {}, h("button", { type: "button", class: "link", onclick: () => go(appPath(app.app_id, "events"), { event_name: e.event_name }) }, e.event_name), e.type && e.type !== "track" ? h("div", { class: "muted" }, e.type) : null),
          h("td", {}, e.path || e.url || "—"),
          h("td", {}, e.user_id ? h("a", { href: `#${appPath(app.app_id, "users")}/${encodeURIComponent(e.user_id)}` }, e.user_id) : h("span", { class: "muted" }, (e.anonymous_id || e.session_id || "anonymous").slice(0, 8))),
          h("td", {}, [e.device_type, e.browser, e.os].filter(Boolean).join(" · ") || "—"),
          h("td", {}, e.country || "—"),
          h("td", {}, h("details", {}, h("summary", {}, "Show"), h("pre", {}, JSON.stringify({ url: e.url, referrer: e.referrer, properties: e.properties, screen: e.screen_size, utm_source: e.utm_source, utm_campaign: e.utm_campaign, event_id: e.event_id }, null, 2))))))))) : h("p", { class: "muted" }, "No events match. Events appear a second or two after they are sent."),
      h("div", { class: "pager" }, page > 1 ? pageLink(page - 1, "Previous") : null, h("span", {}, `Page ${page} of ${pages}`), page < pages ? pageLink(page + 1, "Next") : null)));
}

// ---- users ---------------------------------------------------------------------------------------

async function usersView(app, query, rest) {
  if (rest[0]) return userDetail(app, rest[0]);
  const page = Number(query.get("page") || 1);
  const search = query.get("search") || "";
  const form = h("form", { class: "row", role: "search" },
    h("div", { class: "field" }, h("label", { for: "user-search" }, "Search users"), h("input", { id: "user-search", name: "search", type: "search", value: search })),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => { e.preventDefault(); go(appPath(app.app_id, "users"), Object.fromEntries(new FormData(form).entries())); });
  let r;
  const segment = await segmentPicker(ui, app, query, "users");
  if (segment) form.append(segment);
  try { r = await api("/api/analytics/users", { params: { app_id: app.app_id, page, limit: 50, search, segment_id: query.get("segment_id") } }); }
  catch (err) { return h("div", {}, h("section", { class: "card" }, form), unavailable(err)); }
  const pages = Math.max(1, Math.ceil((r.total || 0) / (r.limit || 50)));
  return h("div", {},
    h("section", { class: "card" }, form, h("p", { class: "muted" }, "Users are visitors your site identified with analytics.identify(userId).")),
    h("section", { class: "card", "aria-labelledby": "users-title" }, h("div", { class: "panelhead" }, h("h2", { id: "users-title" }, `${fmt.num(r.total)} users`),
        downloadButton("/api/analytics/users", { app_id: app.app_id, page, limit: 50, search }, "these users")),
      r.users.length ? h("div", { class: "tablewrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ...["User", "Events", "First seen", "Last seen", "Device", "Country"].map((t) => h("th", { scope: "col", class: t === "Events" ? "num" : null }, t)))),
        h("tbody", {}, ...r.users.map((u) => h("tr", {},
          h("td", {}, h("a", { href: `#${appPath(app.app_id, "users")}/${encodeURIComponent(u.userId)}` }, u.userId)),
          h("td", { class: "num" }, fmt.num(u.events)), h("td", {}, fmt.time(u.firstSeen)), h("td", {}, fmt.time(u.lastSeen)),
          h("td", {}, [u.device, u.browser, u.os].filter(Boolean).join(" · ")), h("td", {}, u.country || "—")))))) : h("p", { class: "muted" }, "No identified users yet."),
      h("div", { class: "pager" }, page > 1 ? h("a", { class: "button secondary", href: `#${appPath(app.app_id, "users")}?page=${page - 1}&search=${encodeURIComponent(search)}` }, "Previous") : null,
        h("span", {}, `Page ${page} of ${pages}`),
        page < pages ? h("a", { class: "button secondary", href: `#${appPath(app.app_id, "users")}?page=${page + 1}&search=${encodeURIComponent(search)}` }, "Next") : null)));
}

async function userDetail(app, userId) {
  const back = h("p", {}, h("a", { href: `#${appPath(app.app_id, "users")}` }, "← All users"));
  let stats;
  try { stats = await api("/api/analytics/user-stats", { params: { app_id: app.app_id, userId, recent: 50 } }); }
  catch (err) { return h("div", {}, back, unavailable(err)); }
  const listed = await api("/api/analytics/users", { params: { app_id: app.app_id, search: userId, limit: 10 } }).then((r) => r.users.find((u) => u.userId === userId), () => null);
  const d = stats.deviceDetails || {};
  const facts = [["Events", fmt.num(stats.totalEvents)], ["First seen", listed ? fmt.time(listed.firstSeen) : "—"], ["Last seen", listed ? fmt.time(listed.lastSeen) : "—"],
    ["Device", d.device || (listed && listed.device) || "—"], ["Browser", d.browser || "—"], ["OS", d.os || "—"], ["Country", (listed && listed.country) || "—"]];
  return h("div", {}, back,
    h("section", { class: "card", "aria-labelledby": "user-title" }, h("h2", { id: "user-title" }, `User ${userId}`),
      h("dl", { class: "metrics" }, ...facts.map(([k, v]) => h("div", { class: "metric" }, h("dt", { class: "label" }, k), h("dd", { class: "value", style: { margin: 0 } }, v)))),
      h("a", { href: `#${appPath(app.app_id, "events")}?user_id=${encodeURIComponent(userId)}` }, "All events of this user")),
    h("section", { class: "card", "aria-labelledby": "recent-title" }, h("h2", { id: "recent-title" }, "Recent events"),
      h("div", { class: "tablewrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ...["Time", "Event", "Page"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, ...(stats.recentEvents || []).map((e) => h("tr", {}, h("td", {}, fmt.time(e.timestamp)), h("td", {}, e.event_name), h("td", {}, e.path || e.url || "—"))))))));
}

// ---- funnels and retention -----------------------------------------------------------------------

async function funnelsView(app, query) {
  const steps = query.get("steps") || "";
  const windowS = query.get("window") || "86400";
  const names = await api("/api/analytics/events/grouped", { params: { app_id: app.app_id, by: "event_name" } }).catch(() => ({ groups: [] }));
  const form = h("form", { class: "row", "aria-label": "Funnel steps" },
    h("div", { class: "field", style: { flex: "1 1 280px" } }, h("label", { for: "steps" }, "Steps: event names in order, separated by commas"),
      h("input", { id: "steps", name: "steps", value: steps, placeholder: "page_view, signup_click, signed_up", required: true })),
    h("div", { class: "field" }, h("label", { for: "window" }, "Within"), h("select", { id: "window", name: "window" },
      ...[["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"], ["2592000", "30 days"]].map(([v, l]) => h("option", { value: v, selected: v === windowS }, l)))),
    h("div", { class: "field" }, h("label", { for: "f-period" }, "Date range"), h("select", { id: "f-period", name: "period" },
      ...PERIODS.filter(([v]) => v !== "custom").map(([v, l]) => h("option", { value: v, selected: v === (query.get("period") || "30d") }, l)))),
    h("button", { type: "submit" }, "Show funnel"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    data.steps = data.steps.split(",").map((x) => x.trim()).filter(Boolean).join(",");
    go(appPath(app.app_id, "funnels"), data);
  });
  const hint = names.groups.length ? h("p", { class: "muted" }, "Your events: ", names.groups.slice(0, 15).map((g) => g.key).join(", ")) : null;
  const segment = await segmentPicker(ui, app, query, "funnels");
  if (segment) form.append(segment);
  const saved = await savedFunnels(ui, app, query);
  if (!steps) return h("div", {}, h("section", { class: "card" }, form, hint), saved);
  let body;
  try {
    const r = await api("/api/analytics/funnels", { params: { app_id: app.app_id, steps, window: windowS, period: query.get("period") || "30d", segment_id: query.get("segment_id") } });
    body = h("ol", { class: "funnel", "aria-label": "Funnel" }, ...r.steps.map((st) => h("li", { class: "step" },
      h("div", {}, h("strong", {}, st.name), ` — ${fmt.num(st.visitors)} ${st.visitors === 1 ? "visitor" : "visitors"} · ${fmt.pct(st.conversion_rate)} of the first step · ${fmt.pct(st.step_conversion_rate)} of the previous`),
      h("div", { class: "track", "aria-hidden": "true" }, h("span", { style: { width: `${Math.max(0, Math.min(100, st.conversion_rate || 0))}%` } })))));
    body = h("div", {}, body, h("nav", { class: "row", "aria-label": "Drop-off lists" }, ...dropoffLinks(ui, app, query, r.steps.length)));
  } catch (err) { body = unavailable(err); }
  return h("div", {}, h("section", { class: "card" }, form, hint), h("section", { class: "card", "aria-labelledby": "funnel-title" }, h("div", { class: "panelhead" }, h("h2", { id: "funnel-title" }, "Conversion"),
    downloadButton("/api/analytics/funnels", { app_id: app.app_id, steps, window: windowS, period: query.get("period") || "30d" }, "the funnel")), body),
    await dropoffList(ui, app, query), saved);
}

async function retentionView(app, query) {
  const interval = query.get("interval") || "week";
  const cohorts = query.get("cohorts") || "8";
  const form = h("form", { class: "row", "aria-label": "Retention settings" },
    h("div", { class: "field" }, h("label", { for: "r-interval" }, "Cohorts by"), h("select", { id: "r-interval", name: "interval" },
      h("option", { value: "day", selected: interval === "day" }, "Day"), h("option", { value: "week", selected: interval === "week" }, "Week"))),
    h("div", { class: "field" }, h("label", { for: "r-cohorts" }, "How many"), h("input", { id: "r-cohorts", name: "cohorts", type: "number", min: 1, max: 52, value: cohorts })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => { e.preventDefault(); go(appPath(app.app_id, "retention"), Object.fromEntries(new FormData(form).entries())); });
  const segment = await segmentPicker(ui, app, query, "retention");
  if (segment) form.append(segment);
  let body;
  try {
    const r = await api("/api/analytics/retention", { params: { app_id: app.app_id, interval, cohorts, segment_id: query.get("segment_id") } });
    const width = Math.max(0, ...r.cohorts.map((c) => c.rates.length));
    body = r.cohorts.length ? h("div", { class: "tablewrap" }, h("table", { class: "heat" },
      h("caption", { class: "sr-only" }, `Share of each ${interval}'s new visitors who came back`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Cohort"), h("th", { scope: "col", class: "num" }, "Visitors"),
        ...Array.from({ length: width }, (_, i) => h("th", { scope: "col", class: "num" }, `${interval === "day" ? "Day" : "Week"} ${i}`)))),
      h("tbody", {}, ...r.cohorts.map((c) => h("tr", {}, h("th", { scope: "row" }, c.cohort), h("td", { class: "num" }, fmt.num(c.size)),
        ...c.rates.map((rate, i) => h("td", { class: "num", title: `${fmt.num(c.retained[i])} visitors`, style: { background: `rgba(48, 70, 197, ${Math.min(0.85, rate / 110)})`, color: rate > 55 ? "#fff" : "#111" } }, fmt.pct(rate)))))))) : h("p", { class: "muted" }, "No visitors yet.");
  } catch (err) { body = unavailable(err); }
  return h("div", {}, h("section", { class: "card" }, form), h("section", { class: "card", "aria-labelledby": "ret-title" }, h("div", { class: "panelhead" }, h("h2", { id: "ret-title" }, "Retention"),
    downloadButton("/api/analytics/retention", { app_id: app.app_id, interval, cohorts }, "retention")), body));
}

// ---- start -------------------------------------------------------------------------------------------

onSessionChange((on) => { if (!on) profile = null; });
window.addEventListener("hashchange", render);
document.getElementById("skip").addEventListener("click", (e) => { e.preventDefault(); main.focus(); });
restoreSession().finally(render); // a session of another tab, or from before a reload, goes on
