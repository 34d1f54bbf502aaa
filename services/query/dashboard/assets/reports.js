// The reports of issue #20: CSV downloads, the paths flow, annotations on the chart, the realtime view.
import { api, download, ApiError } from "./api.js";
import { h, fmt, announce } from "./dom.js";

// ---- CSV download -------------------------------------------------------------------------------

export function downloadButton(path, params, what) {
  const button = h("button", { type: "button", class: "secondary small download", "aria-label": `Download ${what} as CSV` }, "Download CSV");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { announce(`Downloaded ${await download(path, params)}`); }
    catch (err) { announce(`Download failed: ${err.message}`); }
    finally { button.disabled = false; }
  });
  return button;
}

// ---- paths --------------------------------------------------------------------------------------

// Columns of boxes: the start step, then each level's steps (merged by name), most visits first.
export function flowChart(result) {
  const columns = [[{ step: result.start, visits: result.visits }]];
  for (const link of result.links) {
    const col = columns[link.level] || (columns[link.level] = []);
    const node = col.find((n) => n.step === link.to);
    if (node) node.visits += link.visits; else col.push({ step: link.to, visits: link.visits });
  }
  const max = Math.max(1, result.visits);
  const before = result.direction === "before";
  return h("ol", { class: `flow${before ? " before" : ""}`, "aria-label": `Steps ${result.direction} ${result.start}` },
    ...columns.map((col, level) => h("li", { class: "flowcol", "data-level": level },
      h("div", { class: "muted flowhead" }, level === 0 ? "Start" : `${level} ${level === 1 ? "step" : "steps"} ${result.direction}`),
      h("ul", {}, ...col.sort((a, b) => b.visits - a.visits || (a.step < b.step ? -1 : 1)).map((n) => h("li", {
        class: "flownode", "data-step": n.step, title: `${n.step}: ${fmt.num(n.visits)} visits`,
      },
        h("span", { class: "flowname" }, n.step),
        h("span", { class: "flowcount" }, fmt.num(n.visits)),
        h("span", { class: "flowbar", "aria-hidden": "true" }, h("span", { style: { width: `${(100 * n.visits) / max}%` } }))))))));
}

export async function pathsView(app, query, go, appPath, statsParams) {
  const start = query.get("start") || "";
  const direction = query.get("direction") || "after";
  const depth = query.get("depth") || "3";
  const form = h("form", { class: "row", "aria-label": "Path settings" },
    h("div", { class: "field", style: { flex: "1 1 220px" } }, h("label", { for: "p-start" }, "Start: a page (/pricing) or an event name"),
      h("input", { id: "p-start", name: "start", value: start, required: true, placeholder: "/pricing" })),
    h("div", { class: "field" }, h("label", { for: "p-direction" }, "Direction"), h("select", { id: "p-direction", name: "direction" },
      h("option", { value: "after", selected: direction === "after" }, "Steps after"), h("option", { value: "before", selected: direction === "before" }, "Steps before"))),
    h("div", { class: "field" }, h("label", { for: "p-depth" }, "Steps"), h("input", { id: "p-depth", name: "depth", type: "number", min: 1, max: 5, value: depth })),
    h("button", { type: "submit" }, "Show paths"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go(appPath(app.app_id, "paths"), { ...Object.fromEntries(query.entries()), ...Object.fromEntries(new FormData(form).entries()) });
  });
  if (!start) return h("div", {}, h("section", { class: "card" }, form));
  const params = { ...statsParams(app, query), start, direction, depth, limit: 10 };
  let body;
  try {
    const r = await api("/api/analytics/paths", { params });
    body = r.visits ? h("div", {},
      h("p", { id: "paths-visits" }, `${fmt.num(r.visits)} ${r.visits === 1 ? "visit" : "visits"} reached ${r.start}`),
      h("div", { class: "tablewrap" }, flowChart(r)),
      h("h3", {}, "Most common sequences"),
      h("div", { class: "tablewrap" }, h("table", { id: "paths-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Steps"), h("th", { scope: "col", class: "num" }, "Visits"))),
        h("tbody", {}, ...r.paths.map((p) => h("tr", {}, h("td", {}, p.steps.length ? p.steps.join(" → ") : "(visit ended)"), h("td", { class: "num" }, fmt.num(p.visits))))))))
      : h("p", { class: "muted", id: "paths-visits" }, `No visit reached ${r.start} in this range.`);
  } catch (err) { body = err instanceof ApiError ? h("p", { class: "error", role: "alert" }, err.message) : h("p", {}, String(err)); }
  return h("div", {}, h("section", { class: "card" }, form),
    h("section", { class: "card", id: "paths", "aria-labelledby": "paths-title" },
      h("div", { class: "panelhead" }, h("h2", { id: "paths-title" }, `Paths ${direction} ${start}`), downloadButton("/api/analytics/paths", params, "paths")), body));
}

// ---- annotations ----------------------------------------------------------------------------------

// A moment as the wall clock of time zone `tz` shows it: `YYYY-MM-DDTHH:MM:00` (the site's, as the series' buckets).
export function zonedStamp(moment, tz) {
  let parts;
  try {
    parts = new Intl.DateTimeFormat("en-CA", { timeZone: tz || "UTC", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).formatToParts(moment);
  } catch { return zonedStamp(moment, "UTC"); }
  const v = Object.fromEntries(parts.map((x) => [x.type, x.value]));
  return `${v.year}-${v.month}-${v.day}T${v.hour}:${v.minute}:00`;
}

// The chart's marks: each note at the last bucket that starts at or before it (in the site's time zone).
export function marksFor(rows, notes, tz) {
  const marks = [];
  for (const note of notes) {
    const at = note.date ? `${note.date}T00:00:00` : zonedStamp(new Date(note.datetime), tz);
    let index = -1;
    rows.forEach((r, i) => { if (String(r.date) <= at) index = i; });
    if (index >= 0) marks.push({ index, text: note.text, id: note.id });
  }
  return marks;
}

export function annotationForm(app, onAdded) {
  const form = h("form", { class: "row annotate", "aria-label": "Add a note to the chart" },
    h("div", { class: "field" }, h("label", { for: "note-date" }, "Day"), h("input", { id: "note-date", name: "date", type: "date", required: true, value: new Date().toISOString().slice(0, 10) })),
    h("div", { class: "field", style: { flex: "1 1 200px" } }, h("label", { for: "note-text" }, "Note"), h("input", { id: "note-text", name: "text", required: true, maxlength: 500, placeholder: "Launched the new pricing page" })),
    h("button", { type: "submit", class: "secondary" }, "Add note"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    try {
      await api("/api/analytics/annotations", { method: "POST", params: { app_id: app.app_id }, body: { date: data.get("date"), text: data.get("text") } });
      announce("Note added");
      onAdded();
    } catch (err) {
      let box = form.querySelector(".error");
      if (!box) { box = h("div", { class: "error", role: "alert" }); form.prepend(box); }
      box.textContent = err.message;
    }
  });
  return form;
}

// ---- realtime -----------------------------------------------------------------------------------

export function realtimePanel(app, timers) {
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const section = h("section", { class: "card", id: "realtime-detail", "aria-labelledby": "rt-title" },
    h("div", { class: "panelhead" }, h("h2", { id: "rt-title" }, "Realtime: the last 30 minutes"),
      downloadButton("/api/analytics/stats/realtime/detail", { app_id: app.app_id }, "the realtime view")), body);
  const update = async () => {
    try {
      const r = await api("/api/analytics/stats/realtime/detail", { params: { app_id: app.app_id }, fresh: true });
      const max = Math.max(1, ...r.minutes.map((m) => m.visitors));
      const list = (rows, key, title, id) => h("div", {}, h("h3", {}, title), rows.length ? h("table", { id },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, title), h("th", { scope: "col", class: "num" }, "Visitors"))),
        h("tbody", {}, ...rows.map((row) => h("tr", {}, h("td", {}, row[key]), h("td", { class: "num" }, fmt.num(row.visitors))))))
        : h("p", { class: "muted" }, "Nobody right now."));
      body.replaceChildren(
        h("p", { id: "rt-visitors" }, `${fmt.num(r.visitors)} ${r.visitors === 1 ? "visitor" : "visitors"} in the last 30 minutes`),
        h("ol", { class: "minutes", "aria-label": "Visitors per minute" }, ...r.minutes.map((m) => h("li", {
          "data-minute": m.minute, "data-visitors": m.visitors, title: `${new Date(m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${m.visitors} visitors`,
        }, h("span", { style: { height: `${(100 * m.visitors) / max}%` } })))),
        h("div", { class: "grid2" }, list(r.pages, "page", "Pages", "rt-pages"), list(r.sources, "source", "Sources", "rt-sources")));
    } catch (err) { body.replaceChildren(h("p", { class: "error", role: "alert" }, err.message)); }
  };
  update();
  timers.push(setInterval(update, 15000));
  return section;
}
