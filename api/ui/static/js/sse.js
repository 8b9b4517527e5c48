// The live event stream, GET /v1/events (Server-Sent Events), read with fetch and a
// ReadableStream: EventSource cannot send the Authorization header. After a drop it
// reconnects with Last-Event-ID, so no event is missed while the log still holds it.

import { authHeaders, url } from "./api.js";

/** Parse SSE text chunks into {id, event, data} messages (the WHATWG rules, minus retry). */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  push(chunk) {
    this.buffer += chunk;
    let end;
    while ((end = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, end);
      const sep = this.buffer.startsWith("\r\n", end) ? 2 : 1;
      this.buffer = this.buffer.slice(end + sep);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onMessage({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // comment / keep-alive
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.data.push(value);
    else if (name === "event") this.event = value;
    else if (name === "id" && !value.includes("\0")) this.id = value;
  }
}

/**
 * One live subscription: `handler(event)` gets each parsed event (its JSON `data`, with
 * `id` set). `query` holds the route's filters (kinds, station_id). `close()` ends it.
 * `path` is another SSE route of the API (a station's message log: `?follow=true`).
 */
export class EventStream {
  constructor(query, handler, { onState, path = "/events" } = {}) {
    this.path = path;
    this.query = query;
    this.handler = handler;
    this.onState = onState || (() => {});
    this.lastId = null;
    this.closed = false;
    this.controller = null;
    this.delay = 500;
    this.run();
  }

  async run() {
    while (!this.closed) {
      this.controller = new AbortController();
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (this.lastId) headers["Last-Event-ID"] = this.lastId;
        const response = await fetch(url(this.path, this.query), {
          headers,
          credentials: "omit",
          cache: "no-store",
          signal: this.controller.signal,
        });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.onState("live");
        this.delay = 500;
        const parser = new SseParser((message) => this.message(message));
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(value);
        }
      } catch (error) {
        if (this.closed) return;
      }
      if (this.closed) return;
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, this.delay));
      this.delay = Math.min(this.delay * 2, 15_000);
    }
  }

  message({ id, event, data }) {
    if (id) this.lastId = id;
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    if (parsed && typeof parsed === "object") {
      if (!parsed.kind) parsed.kind = event;
      if (!parsed.id && id) parsed.id = id;
      this.handler(parsed);
    }
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }
}
