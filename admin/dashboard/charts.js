// pgmta dashboard charts: SVG drawn from plain arrays, no library. Each
// chart owns one <svg> of fixed size (viewBox) and redraws its children in
// place, so a refresh never changes the page's layout. Labels are set as
// text, never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// The smallest 1, 2 or 5 times a power of ten that is >= v (at least 1).
function niceCeil(v) {
  if (!(v > 1)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtCount(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return String(v);
}

function hhmm(d) {
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}

// Time series: rows [{t: Date, <key>: number, ...}] one per minute, series
// [{key, label, color, area}]. The first series with area: true is filled.
function drawTimeChart(svg, rows, series) {
  const W = 900, H = 240, L = 46, R = 10, T = 12, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const n = rows.length;
  let max = 0;
  for (const r of rows) for (const s of series) max = Math.max(max, r[s.key] || 0);
  max = niceCeil(max);
  const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : 0);
  const y = (v) => T + (H - T - B) * (1 - v / max);

  const grid = svgEl("g", { class: "grid" });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    grid.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    grid.append(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" },
      fmtCount(Math.round(v * 10) / 10)));
  }
  if (n > 1) {
    // a tick every step minutes, at most about 8 of them, on round times
    const minutes = n - 1;
    const step = [5, 10, 15, 30, 60, 120, 180, 360, 720].find((s) => minutes / s <= 8) || 1440;
    for (let i = 0; i < n; i++) {
      const t = rows[i].t;
      if ((t.getHours() * 60 + t.getMinutes()) % step !== 0) continue;
      grid.append(svgEl("line", { x1: x(i), x2: x(i), y1: T, y2: H - B, class: "v" }));
      grid.append(svgEl("text", { x: x(i), y: H - 6, "text-anchor": "middle" }, hhmm(t)));
    }
  }
  svg.append(grid);

  for (const s of series) {
    if (!n) break;
    let d = "";
    rows.forEach((r, i) => {
      d += (i ? " L" : "M") + x(i).toFixed(1) + " " + y(r[s.key] || 0).toFixed(1);
    });
    if (s.area) {
      const a = d + ` L${x(n - 1).toFixed(1)} ${y(0)} L${x(0).toFixed(1)} ${y(0)} Z`;
      svg.append(svgEl("path", { d: a, fill: s.color, "fill-opacity": 0.18, stroke: "none",
        class: "area", "data-series": s.key }));
    }
    svg.append(svgEl("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.8,
      "stroke-linejoin": "round", class: "line", "data-series": s.key }));
  }
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis" }));

  // hover: a cursor line and the values of the minute under the pointer
  const cursor = svgEl("g", { class: "cursor", visibility: "hidden" });
  const cl = svgEl("line", { y1: T, y2: H - B });
  const label = svgEl("text", { y: T + 12 });
  cursor.append(cl, label);
  svg.append(cursor);
  svg.onmousemove = (ev) => {
    if (n < 2) return;
    const box = svg.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * W;
    const i = Math.max(0, Math.min(n - 1, Math.round(((px - L) * (n - 1)) / (W - L - R))));
    cl.setAttribute("x1", x(i));
    cl.setAttribute("x2", x(i));
    label.setAttribute("x", x(i) + (x(i) > W / 2 ? -6 : 6));
    label.setAttribute("text-anchor", x(i) > W / 2 ? "end" : "start");
    label.textContent = hhmm(rows[i].t) + "  " +
      series.map((s) => s.label + " " + (rows[i][s.key] || 0)).join("  ");
    cursor.setAttribute("visibility", "visible");
  };
  svg.onmouseleave = () => cursor.setAttribute("visibility", "hidden");
}

// Horizontal bars: items [{label, value}], at most rows of them (the SVG's
// height is fixed for that many), the largest first.
function drawBars(svg, items, color, rows) {
  const W = 440, RH = 26, LW = 140, VW = 50;
  const H = rows * RH + 4;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  if (!items.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
      "none"));
    return;
  }
  const max = Math.max(...items.map((it) => it.value), 1);
  items.slice(0, rows).forEach((it, i) => {
    const yy = 2 + i * RH;
    const w = Math.max(2, ((W - LW - VW) * it.value) / max);
    const g = svgEl("g", { class: "bar" });
    g.append(svgEl("text", { x: LW - 8, y: yy + 17, "text-anchor": "end" }, it.label));
    g.append(svgEl("rect", { x: LW, y: yy + 4, width: w.toFixed(1), height: RH - 8, rx: 2,
      fill: color }));
    g.append(svgEl("text", { x: LW + w + 6, y: yy + 17, class: "v" }, it.value));
    svg.append(g);
  });
}
