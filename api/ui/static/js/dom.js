// Building DOM nodes: text always goes in as text nodes, never as HTML, so nothing a station
// reports can inject markup.

/** h("tag.class", {attr: value, onclick: fn}, ...children) */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
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

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace everything in `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let fieldCount = 0;
/** A labelled control: <label>text <input id=...></label>. */
export function field(text, control) {
  if (!control.id) control.id = `f${++fieldCount}`;
  return h("label", { for: control.id }, text, control);
}

export function table(headers, rows, { caption } = {}) {
  return h(
    "div.table-wrap",
    {},
    h(
      "table.stack",
      {},
      caption ? h("caption.visually-hidden", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      h(
        "tbody",
        {},
        rows.map((cells) =>
          cells instanceof Node
            ? cells
            : h("tr", {}, cells.map((cell, i) => h("td", { "data-label": headers[i] }, cell))),
        ),
      ),
    ),
  );
}

/** One row whose cells carry data-labels for the narrow layout. */
export function row(headers, cells, attrs = {}) {
  return h("tr", attrs, cells.map((cell, i) => h("td", { "data-label": headers[i] }, cell)));
}

export function facts(pairs) {
  return h(
    "dl.facts",
    {},
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]),
  );
}

export function onlineBadge(online) {
  return h(`span.badge.${online ? "ok" : "bad"}`, {}, online ? "online" : "offline");
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Say something to screen readers through the page's aria-live region. */
export function announce(text) {
  const live = document.getElementById("live");
  if (live) live.textContent = text;
}

export function json(value) {
  return h("pre.answer", {}, JSON.stringify(value, null, 2));
}
