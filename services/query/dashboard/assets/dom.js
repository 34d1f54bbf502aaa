// DOM helpers: elements are built with h() (text is always text: no HTML from data, ever).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "style") el.style.cssText = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function announce(text) {
  const status = document.getElementById("status");
  status.textContent = "";
  setTimeout(() => { status.textContent = text; }, 30);
}

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
export const fmt = {
  num: (v) => (v === null || v === undefined || Number.isNaN(Number(v)) ? "—" : numberFormat.format(Number(v))),
  pct: (v) => (v === null || v === undefined ? "—" : `${numberFormat.format(Number(v))}%`),
  duration: (v) => {
    if (v === null || v === undefined) return "—";
    const s = Math.round(Number(v));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  },
  time: (v) => {
    if (!v) return "—";
    const d = new Date(String(v).endsWith("Z") || /[+-]\d\d:?\d\d$/.test(v) ? v : `${v}Z`);
    return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString();
  },
};

export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { "aria-hidden": "true", style: { position: "fixed", opacity: "0" } }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = was; }, 1500);
  }
  announce("Copied to the clipboard");
}

// ---- forms ---------------------------------------------------------------------------------------

export function field(label, attrs) {
  const id = attrs.id || `f-${attrs.name}`;
  return h("label", { for: id }, label, h("input", { id, ...attrs }));
}

export function formError(form, err) {
  let box = form.querySelector(".error");
  if (!box) { box = h("div", { class: "error", role: "alert" }); form.prepend(box); }
  box.textContent = err.message || String(err);
}

export function submitting(form, fn) {
  return async (e) => {
    e.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try { await fn(new FormData(form)); } catch (err) { formError(form, err); } finally { if (button) button.disabled = false; }
  };
}
