// The "Webhooks" and "Alerts" tabs of a site: auth's /api/auth/apps/{app_id}/webhooks and /alerts.
import { api } from "./api.js";
import { h, fmt, announce, copy } from "./dom.js";

const EVENTS = ["alert.fired", "key.created", "key.revoked", "key.regenerated", "key.expired"];
const METRICS = [["visitors", "Visitors"], ["visits", "Visits"], ["pageviews", "Pageviews"], ["views_per_visit", "Views per visit"],
  ["bounce_rate", "Bounce rate (%)"], ["visit_duration", "Visit duration (s)"], ["events", "Events"], ["custom", "Custom metric"]];
const WINDOWS = [["5m", "5 minutes"], ["15m", "15 minutes"], ["1h", "1 hour"], ["6h", "6 hours"], ["1d", "1 day"], ["7d", "7 days"]];
const CONDITIONS = [["above", "goes above"], ["below", "goes below"], ["spike", "changes by (% vs a week before)"]];

function base(app, what) { return `/api/auth/apps/${encodeURIComponent(app.app_id)}/${what}`; }

function errorBox(holder, err) { holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message || String(err))); }

function checkboxes(legend, name, options, checked) {
  return h("fieldset", { class: "field" }, h("legend", {}, legend),
    ...options.map(([value, label]) => h("label", { class: "check" },
      h("input", { type: "checkbox", name, value, checked: checked.includes(value) }), ` ${label}`)));
}

function select(id, label, name, options, selected) {
  return h("div", { class: "field" }, h("label", { for: id }, label),
    h("select", { id, name }, ...options.map(([v, l]) => h("option", { value: v, selected: v === selected }, l))));
}

// ---- webhooks ----------------------------------------------------------------------------------

function attemptsText(d) {
  return d.attempts.map((a) => (a.status_code ? String(a.status_code) : `error: ${a.error}`)).join(" → ") || "not tried yet";
}

async function deliveriesPanel(app, hook) {
  const rows = await api(`${base(app, "webhooks")}/${encodeURIComponent(hook.id)}/deliveries`);
  if (!rows.length) return h("p", { class: "muted", id: `deliveries-${hook.id}` }, "No deliveries yet.");
  return h("div", { class: "tablewrap", id: `deliveries-${hook.id}` }, h("table", {},
    h("caption", { class: "sr-only" }, `Deliveries to ${hook.url}`),
    h("thead", {}, h("tr", {}, ...["Event", "Created", "Status", "Attempts (status codes)", "Next try"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...rows.map((d) => h("tr", { "data-delivery": d.id, "data-status": d.status },
      h("td", {}, d.event_type), h("td", {}, fmt.time(d.created_at)), h("td", { class: "delivery-status" }, d.status),
      h("td", { class: "delivery-attempts" }, attemptsText(d)), h("td", {}, d.next_attempt_at ? fmt.time(d.next_attempt_at) : "—"))))));
}

export async function webhooksView(app, refresh) {
  const holder = h("div", { id: "webhooks-holder" });
  const hooks = await api(base(app, "webhooks"));
  const form = h("form", { class: "stack", "aria-labelledby": "new-hook-title" },
    h("h2", { id: "new-hook-title" }, "Add a webhook"),
    h("label", { for: "hook-url" }, "Endpoint URL", h("input", { id: "hook-url", name: "url", type: "url", required: true, placeholder: "https://hooks.example.com/analytics" })),
    checkboxes("Events to send", "events", EVENTS.map((e) => [e, e]), ["alert.fired"]),
    h("button", { type: "submit" }, "Add webhook"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const made = await api(base(app, "webhooks"), { method: "POST", body: { url: data.get("url"), events: data.getAll("events") } });
      const fresh = await webhooksView(app, refresh);
      document.getElementById("webhooks-view").replaceWith(fresh);
      const copyButton = h("button", { type: "button", class: "secondary", onclick: (ev) => copy(made.secret, ev.target) }, "Copy secret");
      fresh.querySelector("#webhooks-holder").replaceChildren(h("div", { class: "notice", role: "status" },
        h("p", {}, "Signing secret of the new webhook (shown only now; verify the webhook-signature header with it):"),
        h("code", { id: "webhook-secret" }, made.secret), " ", copyButton));
      announce("Webhook added; copy its signing secret now");
    } catch (err) { errorBox(holder, err); button.disabled = false; }
  });
  const list = hooks.length ? h("ul", { class: "plain", id: "webhook-list" }, ...await Promise.all(hooks.map(async (hook) => h("li", { class: "card", "data-webhook": hook.id },
    h("h3", {}, hook.url),
    h("p", { class: "muted" }, `Events: ${hook.events.join(", ")} · added ${fmt.time(hook.created_at)}`),
    h("button", { type: "button", class: "danger", "aria-label": `Delete webhook ${hook.url}`, onclick: async (e) => {
      if (!confirm(`Stop sending events to ${hook.url}?`)) return;
      e.target.disabled = true;
      try { await api(`${base(app, "webhooks")}/${encodeURIComponent(hook.id)}`, { method: "DELETE" }); announce("Webhook deleted"); refresh(); }
      catch (err) { errorBox(holder, err); e.target.disabled = false; }
    } }, "Delete"),
    h("h4", {}, "Latest deliveries"),
    await deliveriesPanel(app, hook).catch((err) => h("div", { class: "error" }, err.message))))))
    : h("p", { class: "muted", id: "webhook-list" }, "No webhooks yet.");
  return h("div", { id: "webhooks-view" }, holder,
    h("section", { class: "card", "aria-labelledby": "hooks-title" }, h("h2", { id: "hooks-title" }, "Webhooks"),
      h("p", { class: "muted" }, "Each event is POSTed as JSON, signed per the Standard Webhooks spec (webhook-id, webhook-timestamp, webhook-signature), and retried with backoff for about an hour."),
      list),
    h("section", { class: "card" }, form));
}

// ---- alerts ------------------------------------------------------------------------------------

function describeAlert(a) {
  const metric = a.metric === "custom" ? `${a.custom_stat} of ${a.metric_name}` : a.metric;
  const filters = Object.entries(a.filters || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const cond = a.condition === "spike" ? `changes by ${a.threshold}% vs a week before` : `${a.condition} ${a.threshold}`;
  return `${metric}${filters ? ` (${filters})` : ""} over ${a.window} ${cond} → ${a.channels.join(" and ")}`;
}

export async function alertsView(app, refresh) {
  const holder = h("div", { id: "alerts-holder" });
  const alerts = await api(base(app, "alerts"));
  const form = h("form", { class: "stack", "aria-labelledby": "new-alert-title" },
    h("h2", { id: "new-alert-title" }, "Add an alert"),
    h("label", { for: "alert-name" }, "Name", h("input", { id: "alert-name", name: "name", required: true, maxlength: 100 })),
    h("div", { class: "row" },
      select("alert-metric", "Metric", "metric", METRICS, "visitors"),
      h("div", { class: "field" }, h("label", { for: "alert-metric-name" }, "Custom metric name"),
        h("input", { id: "alert-metric-name", name: "metric_name", placeholder: "only for a custom metric" })),
      select("alert-window", "Over the last", "window", WINDOWS, "1h")),
    h("div", { class: "row" },
      select("alert-condition", "When it", "condition", CONDITIONS, "above"),
      h("div", { class: "field" }, h("label", { for: "alert-threshold" }, "Threshold"),
        h("input", { id: "alert-threshold", name: "threshold", type: "number", step: "any", required: true }))),
    checkboxes("Notify by", "channels", [["email", "Email"], ["webhook", "Webhook (alert.fired)"]], ["email"]),
    h("button", { type: "submit" }, "Add alert"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const body = { name: data.get("name"), metric: data.get("metric"), window: data.get("window"), condition: data.get("condition"),
      threshold: Number(data.get("threshold")), channels: data.getAll("channels") };
    if (body.metric === "custom") body.metric_name = data.get("metric_name");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try { await api(base(app, "alerts"), { method: "POST", body }); announce("Alert added"); refresh(); }
    catch (err) { errorBox(holder, err); button.disabled = false; }
  });
  const table = alerts.length ? h("div", { class: "tablewrap" }, h("table", { id: "alert-list" },
    h("caption", { class: "sr-only" }, "Alerts of this site"),
    h("thead", {}, h("tr", {}, ...["Name", "Watches", "State", "Last fired", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...alerts.map((a) => h("tr", { "data-alert": a.id },
      h("td", {}, a.name), h("td", {}, describeAlert(a)),
      h("td", { class: "alert-state" }, a.firing ? `Firing (${fmt.num(a.last_value)})` : "OK"),
      h("td", {}, a.last_fired_at ? fmt.time(a.last_fired_at) : "never"),
      h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete alert ${a.name}`, onclick: async (e) => {
        if (!confirm(`Delete the alert ${a.name}?`)) return;
        e.target.disabled = true;
        try { await api(`${base(app, "alerts")}/${encodeURIComponent(a.id)}`, { method: "DELETE" }); announce("Alert deleted"); refresh(); }
        catch (err) { errorBox(holder, err); e.target.disabled = false; }
      } }, "Delete")))))))
    : h("p", { class: "muted", id: "alert-list" }, "No alerts yet.");
  return h("div", { id: "alerts-view" }, holder,
    h("section", { class: "card", "aria-labelledby": "alerts-title" }, h("h2", { id: "alerts-title" }, "Alerts"),
      h("p", { class: "muted" }, "Checked every minute; an alert fires once when its condition becomes true, and again only after it recovered."),
      table),
    h("section", { class: "card" }, form));
}
