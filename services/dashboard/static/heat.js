// lfi dashboard: maps drawn over their image so the image stays readable, and their colour scale.
// The twin of services/teacher/engine/overlay.py (the PNGs of `lfi teacher demo`): same colour stops,
// same transparent floor, same maximum opacity. A value below HEAT.floor of the map's peak is not drawn
// at all, so the image shows through untouched; above it, colour and opacity rise with the value.
"use strict";

const HEAT = {
  // [position in 0..1, [r, g, b]]: violet to pale yellow, luminance rising stop to stop
  stops: [[0, [120, 28, 109]], [1 / 3, [200, 60, 115]], [2 / 3, [250, 125, 94]], [1, [252, 230, 150]]],
  floor: 0.1,
  maxAlpha: 0.7,
  flatRatio: 3,
};

// The top of a map's scale: its peak, but at least flatRatio times its mean, so a flat map (one that
// singles nothing out) tints the image faintly instead of hiding it (overlay.py's scale_top)
function heatScale(values) {
  if (!values || !values.length) return 0;
  const mean = values.reduce((sum, v) => sum + Math.max(0, v), 0) / values.length;
  return Math.max(Math.max(...values), HEAT.flatRatio * mean);
}

// level in 0..1 (a value over the scale's top) -> [r, g, b, alpha 0..1]
function heatColour(level) {
  const v = Math.min(1, Math.max(0, level || 0));
  let k = 1;
  while (k < HEAT.stops.length - 1 && v > HEAT.stops[k][0]) k++;
  const [p0, c0] = HEAT.stops[k - 1];
  const [p1, c1] = HEAT.stops[k];
  const t = (v - p0) / (p1 - p0);
  const rgb = c0.map((c, i) => Math.round(c + t * (c1[i] - c)));
  const alpha = HEAT.maxAlpha * Math.min(1, Math.max(0, (v - HEAT.floor) / (1 - HEAT.floor)));
  return [...rgb, alpha];
}

// The image scaled to the canvas, then each map cell over it (whole pixels, no overlap between cells, so
// a cell left transparent keeps exactly the image's pixels). Scale 0..vmax (default: heatScale).
function drawHeat(canvas, image, values, grid, vmax) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.globalAlpha = 1;
  if (image) ctx.drawImage(image, 0, 0, width, height);
  if (!values) return;
  const top = vmax || heatScale(values);
  if (!(top > 0)) return;
  const [gh, gw] = grid;
  for (let i = 0; i < gh; i++) {
    const y0 = Math.round((i * height) / gh);
    const y1 = Math.round(((i + 1) * height) / gh);
    for (let j = 0; j < gw; j++) {
      const [r, g, b, a] = heatColour(values[i * gw + j] / top);
      if (a <= 0) continue;
      const x0 = Math.round((j * width) / gw);
      const x1 = Math.round(((j + 1) * width) / gw);
      ctx.fillStyle = `rgba(${r}, ${g}, ${b}, ${a})`;
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
}

function fmtValue(v) { return Number(v.toPrecision(3)).toString(); }

// A vertical colour bar for 0..vmax (top = vmax) with its range written beside it; the band left
// transparent is drawn as a checkerboard, the usual picture of "nothing drawn here".
function heatLegend(vmax, height) {
  const bar = document.createElement("canvas");
  bar.width = 10; bar.height = height;
  const ctx = bar.getContext("2d");
  const floorY = Math.round((1 - HEAT.floor) * (height - 1));
  for (let y = 0; y < height; y++) {
    if (y >= floorY) {
      for (let x = 0; x < bar.width; x += 4) {
        ctx.fillStyle = ((Math.floor(y / 4) + x / 4) % 2) ? "#f5f5f5" : "#cccccc";
        ctx.fillRect(x, y, 4, 1);
      }
      continue;
    }
    const [r, g, b] = heatColour(1 - y / (height - 1));
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(0, y, bar.width, 1);
  }
  const labels = document.createElement("div");
  labels.className = "legend-labels";
  for (const [text, cls] of [[fmtValue(vmax), "legend-max"], ["0", "legend-min"]]) {
    const span = document.createElement("span");
    span.className = cls; span.textContent = text;
    labels.appendChild(span);
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.title = `colour scale: 0 to ${fmtValue(vmax)} (the map's peak, or ${HEAT.flatRatio}× its mean if higher); ` +
                 `below ${fmtValue(HEAT.floor * vmax)} nothing is drawn`;
  legend.dataset.vmax = String(vmax);
  legend.append(bar, labels);
  return legend;
}
