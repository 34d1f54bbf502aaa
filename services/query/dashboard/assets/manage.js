// Managing sites and teams: site settings, shared links, teams and their members, invitations.
// Only the public auth API, as everywhere in the dashboard.
import { api } from "./api.js";
import { h, fmt, announce, copy, field, submitting } from "./dom.js";

const ROLES = [["viewer", "Viewer (reads stats and events)"], ["admin", "Admin (also keys, settings, sharing)"], ["owner", "Owner (also members)"]];
const INVITATION = "analytics.invitation";

// An invitation link (/dashboard?invitation=<token>) is kept for this tab, then out of the address bar.
const invited = new URLSearchParams(location.search).get("invitation");
if (invited) {
  try { sessionStorage.setItem(INVITATION, invited); } catch { /* kept in the URL only */ }
  history.replaceState(null, "", `${location.pathname}#/invitation`);
}
export function pendingInvitation() {
  try { return sessionStorage.getItem(INVITATION) || invited; } catch { return invited; }
}

function roleSelect(id, selected, attrs = {}) {
  return h("select", { id, name: "role", ...attrs }, ...ROLES.map(([v, l]) => h("option", { value: v, selected: v === selected }, l)));
}

function lines(text) { return String(text || "").split(/[\n,]/).map((x) => x.trim()).filter(Boolean); }

// ---- site settings -------------------------------------------------------------------------------

// The browser lists some zones by their old names (CLDR); offer the current IANA ones.
const RENAMED = { "Asia/Calcutta": "Asia/Kolkata", "Europe/Kiev": "Europe/Kyiv", "Asia/Saigon": "Asia/Ho_Chi_Minh",
  "Asia/Katmandu": "Asia/Kathmandu", "America/Godthab": "America/Nuuk", "Asia/Rangoon": "Asia/Yangon",
  "Atlantic/Faeroe": "Atlantic/Faroe", "Pacific/Truk": "Pacific/Chuuk", "Pacific/Ponape": "Pacific/Pohnpei" };

function timeZones(current) {
  let zones = [];
  try { zones = Intl.supportedValuesOf("timeZone").map((z) => RENAMED[z] || z); } catch { zones = []; }
  return ["UTC", ...zones.filter((z) => z !== "UTC" && z !== current), ...(current && current !== "UTC" ? [current] : [])].sort((a, b) => (a === "UTC" ? -1 : b === "UTC" ? 1 : a.localeCompare(b)));
}

export async function settingsView(app) {
  const form = h("form", { class: "stack", "aria-labelledby": "settings-title", id: "settings-form" },
    field("Site name", { name: "name", id: "s-name", value: app.name, required: true, maxlength: 120 }),
    field("Domain", { name: "domain", id: "s-domain", value: app.domain || "", maxlength: 253, placeholder: "blog.example.com" }),
    h("label", { for: "s-timezone" }, "Time zone (decides where each day of your reports starts)",
      h("select", { id: "s-timezone", name: "timezone" }, ...timeZones(app.timezone).map((z) => h("option", { value: z, selected: z === app.timezone }, z)))),
    h("label", { for: "s-excluded" }, "Excluded IP addresses and ranges (one per line; their visits are not counted)",
      h("textarea", { id: "s-excluded", name: "excluded_ips", rows: 3, placeholder: "203.0.113.7\n10.0.0.0/8" }, app.excluded_ips.join("\n"))),
    h("label", { for: "s-origins" }, "Allowed origins of the write key (one per line; none: any website)",
      h("textarea", { id: "s-origins", name: "allowed_origins", rows: 3, placeholder: "https://blog.example.com" }, app.allowed_origins.join("\n"))),
    h("button", { type: "submit" }, "Save settings"));
  const done = h("div", { role: "status" });
  form.addEventListener("submit", submitting(form, async (data) => {
    form.querySelector(".error")?.remove();
    const saved = await api(`/api/auth/apps/${encodeURIComponent(app.app_id)}`, { method: "PATCH", body: {
      name: data.get("name"), domain: data.get("domain") || null, timezone: data.get("timezone"),
      excluded_ips: lines(data.get("excluded_ips")), allowed_origins: lines(data.get("allowed_origins")),
    } });
    Object.assign(app, saved);
    form.querySelector("#s-excluded").value = saved.excluded_ips.join("\n");
    form.querySelector("#s-origins").value = saved.allowed_origins.join("\n");
    done.replaceChildren(h("p", { class: "ok" }, "Settings saved."));
    announce("Settings saved");
  }));
  return h("div", {},
    h("section", { class: "card", "aria-labelledby": "settings-title" }, h("h2", { id: "settings-title" }, "Site settings"), done, form),
    await reportsCard(app));
}

// ---- email reports -------------------------------------------------------------------------------

async function reportsCard(app) {
  const list = h("div", {});
  const reload = async () => {
    const subs = await api("/api/email/reports", { params: { app_id: app.app_id } });
    list.replaceChildren(subs.length ? h("ul", { id: "reports" }, ...subs.map((r) => h("li", { "data-frequency": r.frequency },
      `${r.frequency === "daily" ? "Daily" : "Weekly"} report, next ${fmt.time(r.next_run_at)}`, r.last_sent_at ? `, last sent ${fmt.time(r.last_sent_at)} ` : " ",
      h("button", { type: "button", class: "danger", "aria-label": `Stop the ${r.frequency} report`, onclick: async (e) => {
        e.target.disabled = true;
        await api(`/api/email/reports/${encodeURIComponent(r.id)}`, { method: "DELETE" });
        announce(`${r.frequency} report stopped`);
        await reload();
      } }, "Stop")))) : h("p", { class: "muted", id: "reports" }, "You get no report emails of this site."));
  };
  const form = h("form", { class: "row", "aria-labelledby": "reports-title" },
    h("div", { class: "field" }, h("label", { for: "report-frequency" }, "Frequency"),
      h("select", { id: "report-frequency", name: "frequency" }, h("option", { value: "weekly" }, "Weekly (Mondays)"), h("option", { value: "daily" }, "Daily"))),
    h("label", { for: "report-now" }, h("input", { id: "report-now", name: "send_now", type: "checkbox" }), " also send one now"),
    h("button", { type: "submit" }, "Email me reports"));
  form.addEventListener("submit", submitting(form, async (data) => {
    form.querySelector(".error")?.remove();
    await api("/api/email/reports", { method: "POST", body: { app_id: app.app_id, frequency: data.get("frequency"), send_now: data.get("send_now") === "on" } });
    announce("Report subscribed");
    await reload();
  }));
  await reload();
  return h("section", { class: "card", "aria-labelledby": "reports-title" }, h("h2", { id: "reports-title" }, "Email reports"),
    h("p", { class: "muted" }, "A summary of this site's visitors and events, mailed to you after each day or week."), form, list);
}

// ---- shared links --------------------------------------------------------------------------------

export async function sharingView(app) {
  const base = `/api/auth/apps/${encodeURIComponent(app.app_id)}/shared-links`;
  const made = h("div", { id: "new-link" });
  const list = h("div", {});
  const reload = async () => {
    const links = await api(base);
    list.replaceChildren(links.length ? h("table", { id: "links" },
      h("caption", { class: "sr-only" }, "Shared links of this site"),
      h("thead", {}, h("tr", {}, ...["Link", "Created", "Password", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...links.map((l) => h("tr", { "data-link-id": l.link_id },
        h("td", {}, h("code", {}, `…/share/${l.prefix}…`)), h("td", {}, fmt.time(l.created_at)), h("td", {}, l.has_password ? "yes" : "no"),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Revoke the link ${l.prefix}`, onclick: async (e) => {
          if (!confirm("Revoke this link? Anyone using it loses access at once.")) return;
          e.target.disabled = true;
          await api(`${base}/${encodeURIComponent(l.link_id)}`, { method: "DELETE" });
          announce("Link revoked");
          await reload();
        } }, "Revoke")))))) : h("p", { class: "muted", id: "links" }, "No shared links."));
  };
  const form = h("form", { class: "row", "aria-labelledby": "share-title" },
    h("div", { class: "field" }, h("label", { for: "share-password" }, "Password (optional, at least 8 characters)"),
      h("input", { id: "share-password", name: "password", type: "password", autocomplete: "new-password", minlength: 8, maxlength: 200 })),
    h("button", { type: "submit" }, "Create link"));
  form.addEventListener("submit", submitting(form, async (data) => {
    const link = await api(base, { method: "POST", body: data.get("password") ? { password: data.get("password") } : {} });
    form.reset();
    const url = `${location.origin}/dashboard/share/${encodeURIComponent(link.token)}`; // where this dashboard is served
    const button = h("button", { type: "button", class: "secondary", "aria-label": "Copy the link" }, "Copy");
    button.addEventListener("click", () => copy(url, button));
    made.replaceChildren(h("div", { class: "ok" }, h("p", {}, h("strong", {}, "Copy the link now: it is shown only once."),
      link.has_password ? " Visitors enter the password once." : " Anyone with it sees this site's stats."),
      h("div", { class: "secret" }, h("code", { id: "share-url" }, url), button)));
    announce("Link created; copy it now");
    await reload();
  }));
  await reload();
  return h("div", {},
    h("section", { class: "card", "aria-labelledby": "share-title" }, h("h2", { id: "share-title" }, "Share the stats"),
      h("p", { class: "muted" }, "A shared link opens a read-only dashboard of this site's stats (visitors, pages, sources, devices), with no account. It shows no events, users or keys."),
      made, form),
    h("section", { class: "card", "aria-labelledby": "links-title" }, h("h2", { id: "links-title" }, "Links"), list));
}

// ---- teams ---------------------------------------------------------------------------------------

export async function teamPicker() {
  const teams = (await api("/api/teams").catch(() => [])).filter((t) => t.role !== "viewer");
  if (!teams.length) return null;
  return h("div", { class: "field" }, h("label", { for: "app-team" }, "Belongs to"),
    h("select", { id: "app-team", name: "team_id" }, h("option", { value: "" }, "Only me"), ...teams.map((t) => h("option", { value: t.team_id }, `Team ${t.name}`))));
}

export async function teamsView(go) {
  const teams = await api("/api/teams");
  const form = h("form", { class: "row", "aria-labelledby": "team-new-title" },
    h("div", { class: "field" }, h("label", { for: "team-name" }, "Team name"), h("input", { id: "team-name", name: "name", required: true, maxlength: 120 })),
    h("button", { type: "submit" }, "Create team"));
  form.addEventListener("submit", submitting(form, async (data) => {
    const team = await api("/api/teams", { method: "POST", body: { name: data.get("name") } });
    announce(`Team ${team.name} created`);
    go(`/teams/${encodeURIComponent(team.team_id)}`);
  }));
  return h("div", {}, h("h1", {}, "Your teams"),
    teams.length ? h("ul", { class: "applist", id: "teams", "aria-label": "Teams" }, ...teams.map((t) => h("li", {},
      h("h2", {}, h("a", { href: `#/teams/${encodeURIComponent(t.team_id)}` }, t.name)), h("div", { class: "muted" }, `You are ${t.role}`))))
      : h("p", { class: "muted", id: "teams" }, "No teams yet. A team shares its sites with its members, each with a role."),
    h("section", { class: "card", "aria-labelledby": "team-new-title" }, h("h2", { id: "team-new-title" }, "Create a team"), form));
}

export async function teamView(teamId, go) {
  const path = `/api/teams/${encodeURIComponent(teamId)}`;
  const [team, mine] = await Promise.all([api(`${path}/members`), api("/api/teams")]);
  const me = mine.find((t) => t.team_id === teamId);
  const owner = me && me.role === "owner";
  const profile = await api("/api/user/get_user_profile");
  const status = h("div", { role: "status" });
  const fail = (err) => status.replaceChildren(h("div", { class: "error", role: "alert" }, err.message));
  const redraw = async () => { const fresh = await teamView(teamId, go); main().replaceChildren(fresh); };
  const rows = team.members.map((m) => {
    const self = m.user_id === profile.id;
    const role = owner ? roleSelect(`role-${m.user_id}`, m.role, { "aria-label": `Role of ${m.username}`, onchange: async (e) => {
      try { await api(`${path}/members/${encodeURIComponent(m.user_id)}`, { method: "PATCH", body: { role: e.target.value } }); announce(`${m.username} is now ${e.target.value}`); await redraw(); }
      catch (err) { e.target.value = m.role; fail(err); }
    } }) : m.role;
    const remove = owner || self ? h("button", { type: "button", class: "danger", "aria-label": self ? "Leave the team" : `Remove ${m.username}`, onclick: async () => {
      if (!confirm(self ? "Leave this team? You lose its sites." : `Remove ${m.username} from the team?`)) return;
      try {
        await api(`${path}/members/${encodeURIComponent(m.user_id)}`, { method: "DELETE" });
        announce(self ? "You left the team" : `${m.username} removed`);
        if (self) go("/teams"); else await redraw();
      } catch (err) { fail(err); }
    } }, self ? "Leave" : "Remove") : null;
    return h("tr", { "data-user": m.username }, h("td", {}, m.username), h("td", {}, m.email), h("td", {}, role), h("td", {}, remove));
  });
  let invite = null;
  if (owner) {
    const form = h("form", { class: "row", "aria-labelledby": "invite-title" },
      h("div", { class: "field" }, h("label", { for: "invite-email" }, "Email address"), h("input", { id: "invite-email", name: "email", type: "email", required: true })),
      h("div", { class: "field" }, h("label", { for: "invite-role" }, "Role"), roleSelect("invite-role", "viewer")),
      h("button", { type: "submit" }, "Send invitation"));
    form.addEventListener("submit", submitting(form, async (data) => {
      await api(`${path}/invitations`, { method: "POST", body: { email: data.get("email"), role: data.get("role") } });
      announce(`Invitation sent to ${data.get("email")}`);
      await redraw();
    }));
    invite = h("section", { class: "card", "aria-labelledby": "invite-title" }, h("h2", { id: "invite-title" }, "Invite someone"),
      h("p", { class: "muted" }, "They get an email with a link, valid 7 days, to accept while signed in with that address."), form,
      team.invitations.length ? h("div", {}, h("h3", {}, "Pending invitations"), h("ul", { id: "invitations" },
        ...team.invitations.map((i) => h("li", {}, `${i.email} as ${i.role}, until ${fmt.time(i.expires_at)}`)))) : null);
  }
  return h("div", { id: "team-view" }, h("h1", {}, `Team ${team.name}`), status,
    h("p", { class: "muted" }, `You are ${me ? me.role : "not a member"}. Sites of the team are in `, h("a", { href: "#/apps" }, "your sites"), "."),
    h("section", { class: "card", "aria-labelledby": "members-title" }, h("h2", { id: "members-title" }, "Members"),
      h("div", { class: "tablewrap" }, h("table", { id: "members" }, h("caption", { class: "sr-only" }, "Members and their roles"),
        h("thead", {}, h("tr", {}, ...["Member", "Email", "Role", ""].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...rows)))),
    invite);
}

function main() { return document.getElementById("main"); }

export async function invitationView(go) {
  const token = pendingInvitation();
  if (!token) return h("section", { class: "card narrow" }, h("h1", {}, "Join a team"), h("p", {}, "No invitation here. Open the link of your invitation email."));
  const button = h("button", { type: "button" }, "Accept the invitation");
  const box = h("div", {});
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const team = await api("/api/invitations/accept", { method: "POST", body: { token } });
      try { sessionStorage.removeItem(INVITATION); } catch { /* gone with the tab */ }
      announce(`You joined ${team.name}`);
      go(`/teams/${encodeURIComponent(team.team_id)}`);
    } catch (err) {
      box.replaceChildren(h("div", { class: "error", role: "alert" }, err.message));
      button.disabled = false;
    }
  });
  return h("section", { class: "card narrow" }, h("h1", {}, "Join a team"),
    h("p", {}, "You were invited to a team. Accept to see its sites with the role you were given."), box, button);
}
