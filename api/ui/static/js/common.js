// Pieces several pages share: paging, call answers, live state.

import { ApiError } from "./api.js";
import { h, fill, json } from "./dom.js";

/** Cursor paging over a listing route: keeps the cursors of the pages before. */
export class Pager {
  constructor(load) {
    this.load = load; // (cursor) => Promise<next_cursor>
    this.stack = [];
    this.cursor = null;
    this.next = null;
    this.status = h("span.muted", { "aria-live": "polite" });
    this.prev = h("button.secondary", { type: "button", onclick: () => this.back() }, "Previous page");
    this.more = h("button.secondary", { type: "button", onclick: () => this.forward() }, "Next page");
    this.element = h("div.pager", {}, this.prev, this.more, this.status);
  }

  async show(cursor) {
    this.cursor = cursor;
    this.next = await this.load(cursor);
    this.prev.disabled = this.stack.length === 0;
    this.more.disabled = !this.next;
    this.status.textContent = `page ${this.stack.length + 1}`;
  }

  first() {
    this.stack = [];
    return this.show(null);
  }

  reload() {
    return this.show(this.cursor);
  }

  forward() {
    if (!this.next) return undefined;
    this.stack.push(this.cursor);
    return this.show(this.next);
  }

  back() {
    if (!this.stack.length) return undefined;
    return this.show(this.stack.pop());
  }
}

/** Where a command's answer is shown (announced to screen readers). */
export function answerBox() {
  return h("div.result", { role: "status", "aria-live": "polite" });
}

/** Show a call outcome (or the API's error) in `box`. */
export function showAnswer(box, answer) {
  if (answer instanceof ApiError) {
    fill(
      box,
      h("p.error", {}, `${answer.status} ${answer.code}: ${answer.message}`),
      answer.body && Object.keys(answer.details || {}).length ? json(answer.details) : null,
    );
    return;
  }
  if (answer instanceof Error) {
    fill(box, h("p.error", {}, answer.message));
    return;
  }
  const outcome = answer && (answer.call ? answer.call : answer);
  const head = [];
  if (answer && answer.status && answer.call) head.push(`start ${answer.status}`);
  if (outcome && outcome.outcome) head.push(`outcome: ${outcome.outcome}`);
  if (outcome && outcome.payload && outcome.payload.status) head.push(`station answered ${outcome.payload.status}`);
  if (outcome && outcome.error_code) head.push(`CallError ${outcome.error_code}`);
  fill(box, h("p", {}, head.join(" · ") || "done"), json(answer));
}

/** Run `fn` for a form submit / click, showing what it answered in `box`. */
export async function run(box, button, fn) {
  if (button) button.disabled = true;
  fill(box, h("p.muted", {}, "waiting for the answer…"));
  try {
    showAnswer(box, await fn());
  } catch (error) {
    showAnswer(box, error);
  } finally {
    if (button) button.disabled = false;
  }
}

export function errorView(error) {
  return h(
    "div.panel",
    { role: "alert" },
    h("p.error", {}, error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error)),
  );
}

export function liveState() {
  const el = h("span.badge.muted", { "data-live": "connecting" }, "live: connecting");
  return {
    element: el,
    set(state) {
      el.dataset.live = state;
      el.textContent = `live: ${state}`;
      el.className = `badge ${state === "live" ? "ok" : "warn"}`;
    },
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

/** A stable id for a station's element ids. */
export function slug(text) {
  return String(text).replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`);
}
