// Small SVG charts, drawn here (no chart library): a line chart over time, and a
// horizontal bar list.

import { fmtNumber, h, svg } from "./dom.js";

const W = 560;
const H = 160;
const PAD = { left: 44, right: 10, top: 10, bottom: 22 };

// points: [{t: ms, v: number}], newest last; windowMs: the x axis span.
export function lineChart(points, { label, unit = "", windowMs = 120_000 } = {}) {
  const now = points.length ? points[points.length - 1].t : Date.now();
  const x0 = now - windowMs;
  const shown = points.filter((p) => p.t >= x0 && Number.isFinite(p.v));
  const maxV = Math.max(1, ...shown.map((p) => p.v)); // an idle chart still has a scale
  const top = niceCeiling(maxV);
  const x = (t) => PAD.left + ((t - x0) / windowMs) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const grid = [0, 0.5, 1].map((f) => svg("g", {},
    svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top * f), y2: y(top * f), class: "grid" }),
    svg("text", { x: PAD.left - 6, y: y(top * f) + 4, class: "axis", "text-anchor": "end" },
      fmtNumber(top * f, 1))));
  const path = shown.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`)
    .join(" ");
  const latest = shown.length ? shown[shown.length - 1].v : null;
  const title = `${label}: ${latest === null ? "no data yet" : `${fmtNumber(latest)} ${unit}`}`;
  return h("figure", { class: "chart" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title },
      grid,
      svg("text", { x: PAD.left, y: H - 6, class: "axis" }, `−${Math.round(windowMs / 1000)} s`),
      svg("text", { x: W - PAD.right, y: H - 6, class: "axis", "text-anchor": "end" }, "now"),
      path ? svg("path", { d: path, class: "line" }) : null,
      shown.map((p) => svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5, class: "dot" }))),
    h("figcaption", {}, label, " ",
      h("strong", {}, latest === null ? "–" : `${fmtNumber(latest)} ${unit}`)));
}

function niceCeiling(v) {
  const exp = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

// entries: [[name, count]]; classPrefix colours each bar by its name.
export function barList(entries, { classPrefix = "" } = {}) {
  const max = Math.max(1, ...entries.map(([, n]) => n));
  return h("ul", { class: "bars" }, entries.map(([name, n]) => {
    const fill = h("span", { class: `fill ${classPrefix}${name}` });
    fill.style.width = `${((n / max) * 100).toFixed(1)}%`;
    return h("li", { dataset: { name } },
      h("span", { class: "bar-name" }, name),
      h("span", { class: "bar" }, fill),
      h("span", { class: "bar-value" }, String(n)));
  }));
}
