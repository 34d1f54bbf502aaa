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

// Rows whose metric is null (hours still to come today) are not drawn: the line stops at the last
// bucket with a value. `marks`: [{index, text}] notes drawn as dashed lines at their bucket.
export function lineChart(rows, series, { label = "Chart", xKey = "date", xFormat = (x) => x, marks = [] } = {}) {
  // Drawn at about the width it is shown at, so labels keep their size on a phone.
  const W = Math.round(Math.max(300, Math.min(760, (window.innerWidth || 760) - 70))), H = W < 500 ? 200 : 240;
  const FONT = 11, CHAR = 6.6; // the width of a digit at 11px, about
  const max = niceMax(Math.max(1, ...rows.flatMap((r) => series.map((sr) => Number(r[sr.key]) || 0))));
  // The left margin fits the widest y label (no label clipped at the left edge).
  const yLabels = [0, 1, 2, 3, 4].map((g) => fmt.num((max * g) / 4));
  const L = Math.ceil(10 + CHAR * Math.max(...yLabels.map((t) => t.length))), R = 12, T = 12, B = 30;
  const x = (i) => L + (rows.length <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (rows.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  for (let g = 0; g <= 4; g++) {
    const v = (max * g) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ea" }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": FONT, fill: "#555e69", class: "ylabel" }, yLabels[g]));
  }
  // x labels: as many as fit without touching (each as wide as its text plus a gap), the first and last
  // kept inside the chart (anchored at their start and end).
  const texts = rows.map((r) => String(xFormat(r[xKey])));
  const widest = Math.max(1, ...texts.map((t) => t.length)) * CHAR + 12;
  const slot = rows.length <= 1 ? W : (W - L - R) / (rows.length - 1);
  const every = Math.max(1, Math.ceil(widest / slot));
  const shown = rows.map((_, i) => i).filter((i) => i % every === 0);
  const last = rows.length - 1;
  if (last > 0 && !shown.includes(last) && (last - shown[shown.length - 1]) * slot >= widest) shown.push(last);
  for (const i of shown) {
    const anchor = rows.length > 1 && i === 0 ? "start" : rows.length > 1 && i === last ? "end" : "middle";
    svg.append(s("text", { x: x(i), y: H - 10, "text-anchor": anchor, "font-size": FONT, fill: "#555e69", class: "xlabel" }, texts[i]));
  }
  for (const mark of marks) {
    const line = s("line", { x1: x(mark.index), x2: x(mark.index), y1: T, y2: H - B, stroke: "#ae3ec9", "stroke-dasharray": "4 3", "stroke-width": 1.5, class: "annotation" });
    const flag = s("circle", { cx: x(mark.index), cy: T, r: 4, fill: "#ae3ec9", class: "annotation-flag" });
    flag.append(s("title", {}, `${texts[mark.index]}: ${mark.text}`));
    svg.append(line, flag);
  }
  series.forEach((sr, n) => {
    const color = COLORS[n % COLORS.length];
    const drawn = rows.map((r, i) => [r, i]).filter(([r]) => r[sr.key] !== null && r[sr.key] !== undefined);
    const pts = drawn.map(([r, i]) => `${x(i).toFixed(1)},${y(Number(r[sr.key]) || 0).toFixed(1)}`);
    if (n === 0 && drawn.length > 1) {
      const first = drawn[0][1], end = drawn[drawn.length - 1][1];
      svg.append(s("path", { d: `M${x(first)},${y(0)} L${pts.join(" L")} L${x(end)},${y(0)} Z`, fill: color, opacity: 0.08 }));
    }
    svg.append(s("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2.2, "stroke-linejoin": "round" }));
    drawn.forEach(([r, i]) => {
      const dot = s("circle", { cx: x(i), cy: y(Number(r[sr.key]) || 0), r: rows.length > 40 ? 1.5 : 3, fill: color, class: "point", "data-index": i });
      dot.append(s("title", {}, `${texts[i]}: ${fmt.num(r[sr.key])} ${sr.label}`));
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
