// Goals, custom properties, segments, saved funnels and the drop-off list (docs/query-api.md).
// Views get the dashboard's shared helpers as `ui` (go, appPath, withQuery, statsParams,
// periodControls, panel, unavailable, refresh: render the current view again) from app.js.
import { api } from "./api.js";
import { h, fmt, announce } from "./dom.js";

function table(caption, heads, rows) {
  return h("div", { class: "tablewrap" }, h("table", {},
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, ...heads.map(([t, num]) => h("th", { scope: "col", class: num ? "num" : null }, t)))),
    h("tbody", {}, ...rows)));
}

function formError(form, err) {
  let box = form.querySelector(".error");
  if (!box) { box = h("p", { class: "error", role: "alert" }); form.append(box); }
  box.textContent = err.message;
}

function onSubmit(form, fn) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try { await fn(new FormData(form)); } catch (err) { formError(form, err); } finally { button.disabled = false; }
  });
  return form;
}

function field(label, attrs) {
  return h("div", { class: "field" }, h("label", { for: attrs.id }, label), attrs.options
    ? h("select", { id: attrs.id, name: attrs.name }, ...attrs.options.map(([v, l]) => h("option", { value: v }, l)))
    : h("input", attrs));
}

async function remove(path, app, what, reload) {
  if (!window.confirm(`Delete ${what}?`)) return;
  await api(path, { method: "DELETE", params: { app_id: app.app_id } });
  announce(`${what} deleted`);
  reload();
}

// ---- segment picker ---------------------------------------------------------------------------

export async function segmentPicker(ui, app, query, view) {
  const list = await api("/api/analytics/segments", { params: { app_id: app.app_id } }).catch(() => ({ segments: [] }));
  if (!list.segments.length) return null;
  const current = query.get("segment_id") || "";
  const select = h("select", { id: "segment-picker", name: "segment_id",
    onchange: (e) => ui.go(ui.appPath(app.app_id, view), ui.withQuery(query, { segment_id: e.target.value || null })) },
  h("option", { value: "" }, "Everyone"), ...list.segments.map((s) => h("option", { value: s.id, selected: s.id === current }, s.name)));
  return h("div", { class: "field" }, h("label", { for: "segment-picker" }, "Segment"), select);
}

// ---- goals and properties ---------------------------------------------------------------------

export async function goalsView(ui, app, query) {
  const params = ui.statsParams(app, query);
  const reload = ui.refresh;
  const goals = (await api("/api/analytics/goals", { params: { app_id: app.app_id } })).goals;
  const form = onSubmit(h("form", { class: "row", "aria-label": "New goal" },
    field("Goal name", { id: "goal-name", name: "name", required: true, maxlength: 120 }),
    field("Kind", { id: "goal-kind", name: "kind", options: [["page", "Page visit"], ["event", "Event"]] }),
    field("Page path (* matches anything) or event name", { id: "goal-match", name: "match", required: true, placeholder: "/blog/*" }),
    h("button", { type: "submit" }, "Add goal")), async (data) => {
    await api("/api/analytics/goals", { method: "POST", params: { app_id: app.app_id }, body: Object.fromEntries(data.entries()) });
    announce("Goal added");
    reload();
  });
  const list = goals.length ? table("Goals", [["Goal"], ["Kind"], ["Matches"], [""]], goals.map((g) => h("tr", { "data-goal": g.name },
    h("td", {}, g.name), h("td", {}, g.kind), h("td", {}, h("code", {}, g.match)),
    h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": `Delete goal ${g.name}`,
      onclick: () => remove(`/api/analytics/goals/${encodeURIComponent(g.id)}`, app, `goal ${g.name}`, reload) }, "Delete")))))
    : h("p", { class: "muted" }, "No goals yet: add a page (such as /signup/done) or an event (such as purchase).");
  return h("div", {},
    h("div", { class: "row", style: { marginBottom: ".8rem" } }, ui.periodControls(app, query, "goals"), await segmentPicker(ui, app, query, "goals")),
    h("section", { class: "card", "aria-labelledby": "goals-title" }, h("h2", { id: "goals-title" }, "Goals"), list, form),
    ui.panel("Goal conversions", "goal-conversions", async () => {
      const r = await api("/api/analytics/stats/breakdown", { params: { ...params, property: "goal", limit: 100 } });
      if (!r.results.length) return h("p", { class: "muted" }, "Add a goal to see its conversions.");
      return table("Conversions per goal", [["Goal"], ["Converted visitors", true], ["Completions", true], ["Conversion rate", true]],
        r.results.map((g) => h("tr", { "data-goal": g.goal }, h("td", {}, g.goal), h("td", { class: "num" }, fmt.num(g.conversions)),
          h("td", { class: "num" }, fmt.num(g.completions)), h("td", { class: "num" }, fmt.pct(g.conversion_rate)))));
    }),
    await propertiesPanel(ui, app, query, params));
}

async function propertiesPanel(ui, app, query, params) {
  const event = query.get("prop_event") || "";
  const chosen = query.get("prop") || "";
  const names = await api("/api/analytics/events/grouped", { params: { app_id: app.app_id, by: "event_name" } }).catch(() => ({ groups: [] }));
  const pick = h("select", { id: "prop-event", name: "prop_event",
    onchange: (e) => ui.go(ui.appPath(app.app_id, "goals"), ui.withQuery(query, { prop_event: e.target.value || null, prop: null })) },
  h("option", { value: "" }, "Choose an event"), ...names.groups.map((g) => h("option", { value: g.key, selected: g.key === event }, g.key)));
  const body = h("div", {}, h("div", { class: "field" }, h("label", { for: "prop-event" }, "Event"), pick));
  if (event) {
    try {
      const props = await api("/api/analytics/properties", { params: { app_id: app.app_id, event_name: event, period: params.period, date: params.date, tz: params.tz } });
      body.append(props.properties.length
        ? h("ul", { class: "chips", "aria-label": "Properties" }, ...props.properties.map((p) => h("li", { class: "chip" },
          h("button", { type: "button", class: "link", "aria-pressed": p.name === chosen ? "true" : "false",
            onclick: () => ui.go(ui.appPath(app.app_id, "goals"), ui.withQuery(query, { prop: p.name })) }, `${p.name} (${fmt.num(p.events)})`))))
        : h("p", { class: "muted" }, "This event carried no properties in this range."));
      if (chosen) {
        const property = `props:${chosen}`;
        const r = await api("/api/analytics/stats/breakdown", { params: { ...params, property, event_name: event, metrics: "visitors,events", limit: 50 } });
        body.append(h("h3", {}, `Values of ${chosen}`), r.results.length
          ? table(`Values of ${chosen}`, [["Value"], ["Visitors", true], ["Events", true]], r.results.map((row) => h("tr", { "data-value": row[property] },
            h("td", {}, String(row[property])), h("td", { class: "num" }, fmt.num(row.visitors)), h("td", { class: "num" }, fmt.num(row.events)))))
          : h("p", { class: "muted" }, "No values in this range."));
      }
    } catch (err) { body.append(ui.unavailable(err)); }
  }
  return h("section", { class: "card", "aria-labelledby": "props-title", id: "properties" }, h("h2", { id: "props-title" }, "Custom properties"), body);
}

// ---- segments ---------------------------------------------------------------------------------

function describeSegment(spec) {
  const parts = [];
  for (const [k, v] of Object.entries(spec.filters || {})) parts.push(`${k} is ${v}`);
  for (const e of spec.events || []) parts.push(`did ${e.event} at least ${e.min_count}× in the last ${e.days} days`);
  if (spec.first_seen) parts.push(`first seen ${spec.first_seen.start} to ${spec.first_seen.end}`);
  for (const t of spec.traits || []) parts.push(`trait ${t.name} ${t.op} ${t.value}`);
  return parts.join("; ");
}

export async function segmentsView(ui, app, query) {
  const reload = ui.refresh;
  const segments = (await api("/api/analytics/segments", { params: { app_id: app.app_id } })).segments;
  const form = onSubmit(h("form", { "aria-label": "New segment" },
    h("div", { class: "row" }, field("Segment name", { id: "seg-name", name: "name", required: true, maxlength: 120 })),
    h("fieldset", {}, h("legend", {}, "Did an event"), h("div", { class: "row" },
      field("Event name", { id: "seg-event", name: "event" }),
      field("At least (times)", { id: "seg-count", name: "min_count", type: "number", min: 1, value: 1 }),
      field("In the last (days)", { id: "seg-days", name: "days", type: "number", min: 1, value: 30 }))),
    h("fieldset", {}, h("legend", {}, "First seen"), h("div", { class: "row" },
      field("From", { id: "seg-from", name: "first_from", type: "date" }), field("To", { id: "seg-to", name: "first_to", type: "date" }))),
    h("fieldset", {}, h("legend", {}, "Trait (latest identify)"), h("div", { class: "row" },
      field("Trait name", { id: "seg-trait", name: "trait" }),
      field("Compare", { id: "seg-op", name: "op", options: [["eq", "is"], ["neq", "is not"], ["contains", "contains"], ["gt", "greater than"], ["lt", "less than"]] }),
      field("Trait value", { id: "seg-value", name: "value" }))),
    h("fieldset", {}, h("legend", {}, "Had an event with"), h("div", { class: "row" },
      field("Country", { id: "seg-country", name: "country", maxlength: 2 }), field("Page", { id: "seg-page", name: "page" }))),
    h("button", { type: "submit" }, "Save segment")), async (data) => {
    const v = Object.fromEntries(data.entries());
    const body = { name: v.name, filters: {}, events: [], traits: [] };
    if (v.country) body.filters.country = v.country;
    if (v.page) body.filters.page = v.page;
    if (v.event) body.events.push({ event: v.event, min_count: Number(v.min_count || 1), days: Number(v.days || 30) });
    if (v.first_from || v.first_to) body.first_seen = { start: v.first_from, end: v.first_to };
    if (v.trait) body.traits.push({ name: v.trait, op: v.op, value: ["gt", "lt"].includes(v.op) ? Number(v.value) : v.value });
    await api("/api/analytics/segments", { method: "POST", params: { app_id: app.app_id }, body });
    announce("Segment saved");
    reload();
  });
  const list = segments.length ? table("Segments", [["Segment"], ["Who"], [""]], segments.map((s) => h("tr", { "data-segment": s.name },
    h("td", {}, h("a", { href: `#${ui.appPath(app.app_id, "overview")}?segment_id=${encodeURIComponent(s.id)}` }, s.name)),
    h("td", {}, describeSegment(s.spec)),
    h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": `Delete segment ${s.name}`,
      onclick: () => remove(`/api/analytics/segments/${encodeURIComponent(s.id)}`, app, `segment ${s.name}`, reload) }, "Delete")))))
    : h("p", { class: "muted" }, "No segments yet.");
  return h("div", {},
    h("section", { class: "card", "aria-labelledby": "segments-title" }, h("h2", { id: "segments-title" }, "Segments"),
      h("p", { class: "muted" }, "A segment is everyone who meets all of its conditions; pick it on Overview, Funnels, Retention or Users."), list),
    h("section", { class: "card", "aria-labelledby": "new-seg-title" }, h("h2", { id: "new-seg-title" }, "New segment"), form));
}

// ---- saved funnels and the drop-off list ------------------------------------------------------

export async function savedFunnels(ui, app, query) {
  const reload = ui.refresh;
  const saved = await api("/api/analytics/funnels/saved", { params: { app_id: app.app_id } }).catch(() => ({ funnels: [] }));
  const steps = query.get("steps");
  const save = steps ? onSubmit(h("form", { class: "row", "aria-label": "Save this funnel" },
    field("Funnel name", { id: "funnel-name", name: "name", required: true, maxlength: 120 }),
    h("button", { type: "submit", class: "secondary" }, "Save funnel")), async (data) => {
    await api("/api/analytics/funnels/saved", { method: "POST", params: { app_id: app.app_id },
      body: { name: data.get("name"), steps: steps.split(","), window: Number(query.get("window") || 86400) } });
    announce("Funnel saved");
    reload();
  }) : null;
  return h("section", { class: "card", "aria-labelledby": "saved-title" }, h("h2", { id: "saved-title" }, "Saved funnels"),
    saved.funnels.length ? h("ul", { class: "saved-funnels" }, ...saved.funnels.map((f) => h("li", { "data-funnel": f.name },
      h("a", { href: `#${ui.appPath(app.app_id, "funnels")}?${new URLSearchParams({ ...ui.withQuery(query, {}), steps: f.spec.steps.join(","), window: String(f.spec.window), dropoff: "" })}` }, f.name),
      ` — ${f.spec.steps.join(" → ")} `,
      h("button", { type: "button", class: "link", "aria-label": `Delete funnel ${f.name}`,
        onclick: () => remove(`/api/analytics/funnels/saved/${encodeURIComponent(f.id)}`, app, `funnel ${f.name}`, reload) }, "Delete"))))
      : h("p", { class: "muted" }, "No saved funnels yet."), save);
}

export async function dropoffList(ui, app, query) {
  const steps = (query.get("steps") || "").split(",").filter(Boolean);
  const step = Number(query.get("dropoff") || 0);
  if (!step || step >= steps.length) return null;
  const page = Number(query.get("dropoff_page") || 1);
  const limit = 50;
  let body;
  try {
    const r = await api("/api/analytics/funnels/dropoff", { params: { app_id: app.app_id, steps: steps.join(","), step, window: query.get("window") || 86400,
      period: query.get("period") || "30d", segment_id: query.get("segment_id"), page, limit } });
    const pages = Math.max(1, Math.ceil(r.total / limit));
    const link = (n, label) => h("a", { class: "button secondary", href: `#${ui.appPath(app.app_id, "funnels")}?${new URLSearchParams(ui.withQuery(query, { dropoff_page: String(n) }))}` }, label);
    body = h("div", {}, h("p", { id: "dropoff-total" }, `${fmt.num(r.total)} ${r.total === 1 ? "visitor" : "visitors"} did ${steps[step - 1]} but not ${steps[step]}`),
      r.users.length ? table("Visitors who dropped off", [["Visitor"], ["Last seen"]], r.users.map((u) => h("tr", {},
        h("td", {}, u.user_id ? h("a", { href: `#${ui.appPath(app.app_id, "users")}/${encodeURIComponent(u.user_id)}` }, u.user_id) : u.visitor),
        h("td", {}, fmt.time(u.last_seen))))) : null,
      h("div", { class: "pager" }, page > 1 ? link(page - 1, "Previous") : null, h("span", {}, `Page ${page} of ${pages}`), page < pages ? link(page + 1, "Next") : null));
  } catch (err) { body = ui.unavailable(err); }
  return h("section", { class: "card", "aria-labelledby": "dropoff-title", id: "dropoff" }, h("h2", { id: "dropoff-title" }, `Dropped off after step ${step}`), body);
}

export function dropoffLinks(ui, app, query, count) {
  return Array.from({ length: count - 1 }, (_, i) => h("a", { class: "dropoff-link",
    href: `#${ui.appPath(app.app_id, "funnels")}?${new URLSearchParams(ui.withQuery(query, { dropoff: String(i + 1), dropoff_page: null }))}` },
  `Who dropped off after step ${i + 1}`));
}
