// A form for any OCPP request, generated from its JSON schema (GET /v1/schemas/{v}/{action}).
// Objects become fieldsets, enums selects, numbers number inputs; arrays and anything the
// generator does not model are edited as JSON.

import { field, h } from "./dom.js";

function resolve(schema, root) {
  let current = schema || {};
  for (let depth = 0; current.$ref && depth < 20; depth += 1) {
    const path = current.$ref.replace(/^#\//, "").split("/");
    current = path.reduce((node, part) => (node ? node[part] : undefined), root) || {};
  }
  return current;
}

/**
 * Build the form's controls for `schema` into a container; returns {element, value()} where
 * value() gives the payload (throws Error with a message naming the field on bad input).
 */
export function schemaForm(schema, idPrefix = "sf") {
  const root = schema;
  let count = 0;
  const nextId = () => `${idPrefix}-${++count}`;

  function build(node, name, required, path) {
    const s = resolve(node, root);
    const label = `${name}${required ? " (required)" : ""}`;
    const hint = s.description ? h("span.desc.muted", {}, s.description.slice(0, 160)) : null;
    if (s.type === "object" && s.properties) {
      const needed = new Set(s.required || []);
      const children = Object.entries(s.properties)
        .filter(([key]) => key !== "customData")
        .map(([key, child]) => build(child, key, needed.has(key), `${path}${path ? "." : ""}${key}`));
      const element = h(
        "fieldset.nested",
        {},
        h("legend", {}, label),
        children.map((c) => c.element),
      );
      return {
        element,
        // lenient: only whether anything is filled in (an optional object left empty is
        // left out, though its own fields may be required).
        value(lenient = false) {
          const keys = Object.keys(s.properties).filter((k) => k !== "customData");
          const collect = (loose) => {
            const out = {};
            for (const [i, key] of keys.entries()) {
              const v = children[i].value(loose);
              if (v !== undefined) out[key] = v;
            }
            return out;
          };
          const filled = Object.keys(collect(true)).length > 0;
          if (!filled && (lenient || !required)) return undefined;
          return lenient ? collect(true) : collect(false);
        },
      };
    }
    let control;
    let read;
    if (Array.isArray(s.enum)) {
      control = h(
        "select",
        { id: nextId(), name: path },
        h("option", { value: "" }, required ? "— choose —" : "— not set —"),
        s.enum.map((v) => h("option", { value: v }, v)),
      );
      read = () => control.value || undefined;
    } else if (s.type === "integer" || s.type === "number") {
      control = h("input", { id: nextId(), name: path, type: "number", step: s.type === "integer" ? "1" : "any" });
      read = () => {
        if (control.value === "") return undefined;
        const n = Number(control.value);
        if (!Number.isFinite(n)) throw new Error(`${path}: not a number`);
        return n;
      };
    } else if (s.type === "boolean") {
      control = h(
        "select",
        { id: nextId(), name: path },
        h("option", { value: "" }, "— not set —"),
        h("option", { value: "true" }, "true"),
        h("option", { value: "false" }, "false"),
      );
      read = () => (control.value === "" ? undefined : control.value === "true");
    } else if (s.type === "string") {
      control = h("input", {
        id: nextId(),
        name: path,
        type: "text",
        maxlength: s.maxLength,
        placeholder: s.format === "date-time" ? "2026-01-15T12:00:00Z" : undefined,
      });
      read = () => (control.value === "" ? undefined : control.value);
    } else {
      control = h("textarea", { id: nextId(), name: path, rows: 3, placeholder: "JSON" });
      read = () => {
        if (control.value.trim() === "") return undefined;
        try {
          return JSON.parse(control.value);
        } catch {
          throw new Error(`${path}: not valid JSON`);
        }
      };
    }
    if (required) control.setAttribute("aria-required", "true");
    const element = h("div.field", {}, field(label, control), hint);
    return {
      element,
      value(lenient = false) {
        const v = read();
        if (v === undefined && required && !lenient) throw new Error(`${path} is required`);
        return v;
      },
    };
  }

  const top = build(root, "payload", true, "");
  return {
    element: top.element,
    value: () => top.value() || {},
  };
}
