// Small DOM helpers: every text goes in as a text node (job names, payloads and log
// lines are user data), never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export const STATUSES = [
  "pending", "blocked", "ready", "running", "retrying", "completed", "failed", "cancelled",
];
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);
export const PRIORITIES = ["critical", "high", "normal", "low"];

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function jobLink(id, label) {
  return h("a", { href: `#/job/${id}`, class: "mono" }, label || shortId(id));
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${seconds.toFixed(1)} s`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function fmtNumber(n, digits = 2) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  return Number.isInteger(n) ? String(n) : n.toFixed(digits).replace(/\.?0+$/, "");
}

export function jsonBlock(value, label) {
  return h("pre", { class: "json", "aria-label": label, tabindex: "0" },
    value === undefined ? "" : JSON.stringify(value, null, 2));
}

// A labelled horizontal bar: used / total, as on the workers' capacity map.
export function meter(label, used, total, unit) {
  const share = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  const free = Math.max(0, total - used);
  const fill = h("span", { class: "fill" });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const text = `${fmtNumber(used)} / ${fmtNumber(total)}${unit ? ` ${unit}` : ""} allocated, `
    + `${fmtNumber(free)} free`;
  return h("div", { class: "meter-row" },
    h("span", { class: "meter-label" }, label),
    h("span", {
      class: `meter${share >= 0.999 ? " full" : ""}`, role: "meter", "aria-label": label,
      "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": used,
    }, fill),
    h("span", { class: "meter-text" }, text));
}

export function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows));
}

export function notice(message, kind = "error") {
  const el = document.getElementById("notice");
  if (!message) {
    el.hidden = true;
    return;
  }
  el.className = `notice ${kind}`;
  el.replaceChildren(h("span", {}, message),
    h("button", { type: "button", class: "link", onclick: () => notice(null) }, "Dismiss"));
  el.hidden = false;
}

// Like Element.replaceChildren, but nested arrays are flattened and null / false
// skipped, as h() does.
export function setChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}
