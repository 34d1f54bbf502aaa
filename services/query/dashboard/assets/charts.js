// Small SVG charts drawn here (no chart library): a line chart for time series, with a table twin
// for screen readers and anyone who wants the exact numbers.
import { h, fmt } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3046c5", "#d9480f", "#2b8a3e", "#ae3ec9"];

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

// The top of the y axis: four equal steps, each a whole "nice" number (1, 2, 5, 10, 20, 25, 50, ...).
function niceMax(v) {
  const raw = Math.max(1, v / 4);
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw && Number.isInteger(m * p)) return 4 * m * p;
  return 40 * p;
}

export function lineChart(rows, series, { label = "Chart", xKey = "date", xFormat = (x) => x } = {}) {
  // Drawn at about the width it is shown at, so labels keep their size on a phone.
  const W = Math.round(Math.max(300, Math.min(760, (window.innerWidth || 760) - 70))), H = W < 500 ? 200 : 240;
  const L = 44, R = 12, T = 12, B = 30;
  const max = niceMax(Math.max(1, ...rows.flatMap((r) => series.map((sr) => Number(r[sr.key]) || 0))));
  const x = (i) => L + (rows.length <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (rows.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, preserveAspectRatio: "none" });
  for (let g = 0; g <= 4; g++) {
    const v = (max * g) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ea" }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#555e69" }, fmt.num(v)));
  }
  const every = Math.max(1, Math.ceil(rows.length / Math.max(3, Math.floor(W / 95))));
  rows.forEach((r, i) => {
    if (i % every === 0 || i === rows.length - 1) {
      svg.append(s("text", { x: x(i), y: H - 10, "text-anchor": "middle", "font-size": 11, fill: "#555e69" }, xFormat(r[xKey])));
    }
  });
  series.forEach((sr, n) => {
    const color = COLORS[n % COLORS.length];
    const pts = rows.map((r, i) => `${x(i).toFixed(1)},${y(Number(r[sr.key]) || 0).toFixed(1)}`);
    if (n === 0 && rows.length > 1) {
      svg.append(s("path", { d: `M${x(0)},${y(0)} L${pts.join(" L")} L${x(rows.length - 1)},${y(0)} Z`, fill: color, opacity: 0.08 }));
    }
    svg.append(s("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2.2, "stroke-linejoin": "round" }));
    rows.forEach((r, i) => {
      const dot = s("circle", { cx: x(i), cy: y(Number(r[sr.key]) || 0), r: rows.length > 40 ? 1.5 : 3, fill: color });
      dot.append(s("title", {}, `${xFormat(r[xKey])}: ${fmt.num(r[sr.key])} ${sr.label}`));
      svg.append(dot);
    });
  });
  const legend = h("div", { class: "legend", "aria-hidden": "true" },
    ...series.map((sr, n) => h("span", {}, h("span", { class: "swatch", style: { background: COLORS[n % COLORS.length] } }), sr.label)));
  const table = h("details", {}, h("summary", {}, "Show as table"),
    h("div", { class: "tablewrap" }, h("table", {},
      h("caption", { class: "sr-only" }, label),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Date"), ...series.map((sr) => h("th", { scope: "col", class: "num" }, sr.label)))),
      h("tbody", {}, ...rows.map((r) => h("tr", {}, h("td", {}, xFormat(r[xKey])), ...series.map((sr) => h("td", { class: "num" }, fmt.num(r[sr.key])))))))));
  return h("div", { class: "chart" }, svg, legend, table);
}
