// An energy chart as inline SVG: energy (kWh) over time, from readings {at, wh}.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * Draw `points` ({at: ISO time, wh: energy so far}) into a new <svg>; `label` names it for
 * assistive technology. The element carries data-points (the number of points) and
 * data-last-wh, which say what it shows without reading pixels.
 */
export function energyChart(points, label) {
  const width = 640;
  const height = 240;
  const pad = { left: 56, right: 16, top: 16, bottom: 32 };
  const data = points
    .map((p) => ({ t: new Date(p.at).getTime(), wh: Number(p.wh) }))
    .filter((p) => Number.isFinite(p.t) && Number.isFinite(p.wh))
    .sort((a, b) => a.t - b.t);
  const last = data.length ? data[data.length - 1].wh : 0;
  const root = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${label}: ${data.length} readings, ${(last / 1000).toFixed(3)} kWh`,
    "data-points": data.length,
    "data-last-wh": last,
  });
  const x0 = pad.left;
  const x1 = width - pad.right;
  const y0 = height - pad.bottom;
  const y1 = pad.top;
  root.append(svg("line", { class: "axis", x1: x0, y1: y0, x2: x1, y2: y0 }));
  root.append(svg("line", { class: "axis", x1: x0, y1: y0, x2: x0, y2: y1 }));
  if (!data.length) {
    root.append(svg("text", { x: x0 + 8, y: (y0 + y1) / 2 }, "no readings yet"));
    return root;
  }
  const tMin = data[0].t;
  const tMax = Math.max(data[data.length - 1].t, tMin + 1);
  const whMin = Math.min(0, ...data.map((p) => p.wh));
  const whMax = Math.max(whMin + 1, ...data.map((p) => p.wh));
  const x = (t) => x0 + ((t - tMin) / (tMax - tMin)) * (x1 - x0);
  const y = (wh) => y0 - ((wh - whMin) / (whMax - whMin)) * (y0 - y1);
  const path = data.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.wh).toFixed(1)}`);
  if (data.length === 1) path.push(`L${x1},${y(data[0].wh).toFixed(1)}`);
  root.append(svg("path", { class: "line", d: path.join(" ") }));
  root.append(svg("text", { x: 4, y: y1 + 10 }, `${(whMax / 1000).toFixed(2)} kWh`));
  root.append(svg("text", { x: 4, y: y0 }, `${(whMin / 1000).toFixed(2)}`));
  const fmt = (t) => new Date(t).toLocaleTimeString();
  root.append(svg("text", { x: x0, y: height - 8 }, fmt(tMin)));
  root.append(svg("text", { x: x1, y: height - 8, "text-anchor": "end" }, fmt(tMax)));
  return root;
}
