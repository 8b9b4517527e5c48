// Network overview: counts, the station list (server-side filters and paging), live status.

import { api, seg } from "./api.js";
import { announce, field, fill, h, onlineBadge, row, table, when } from "./dom.js";
import { EventStream } from "./sse.js";
import { Pager, debounce, errorView, liveState } from "./common.js";

const HEADERS = ["Station", "Status", "Registration", "Version", "Vendor / model", "Last seen"];

export function overview(ctx) {
  const cards = h("div.cards", { "aria-label": "Station counts" });
  const listing = h("div", { "aria-live": "polite" });
  const live = liveState();
  const search = h("input", { type: "search", name: "prefix", maxlength: 48, autocomplete: "off" });
  const online = h(
    "select",
    { name: "online" },
    h("option", { value: "" }, "any"),
    h("option", { value: "true" }, "online"),
    h("option", { value: "false" }, "offline"),
  );
  const registration = h(
    "select",
    { name: "registration" },
    ["", "Accepted", "Pending", "Rejected"].map((v) => h("option", { value: v }, v || "any")),
  );
  const filters = h(
    "form.row",
    { role: "search", onsubmit: (e) => { e.preventDefault(); pager.first(); } },
    field("Station id starts with", search),
    field("Connection", online),
    field("Registration", registration),
    h("button", { type: "submit" }, "Filter"),
  );
  const rows = new Map();

  async function loadStats() {
    try {
      const { stations: s } = await api("/stats");
      fill(
        cards,
        [["Stations", s.total, ""], ["Online", s.online, "ok"], ["Offline", s.offline, "bad"],
         ["Accepted", s.accepted, ""], ["Pending", s.pending, "warn"], ["Rejected", s.rejected, "bad"],
         ["Faulted", s.faulted, "bad"]]
          .map(([name, n, tone]) => h("div.card", { "data-count": name.toLowerCase() },
            h(`span.n${tone ? `.${tone}` : ""}`, {}, n), name)),
      );
    } catch (error) {
      fill(cards, errorView(error));
    }
  }

  const pager = new Pager(async (cursor) => {
    const page = await api("/stations", {
      query: { cursor, limit: 50, prefix: search.value.trim(), online: online.value, registration: registration.value },
    });
    rows.clear();
    const body = page.items.map((s) => {
      const status = h("span", {}, onlineBadge(s.online));
      const seen = h("span", {}, when(s.last_seen));
      const tr = row(HEADERS, [
        h("a", { href: `#/stations/${seg(s.station_id)}` }, s.station_id),
        status,
        s.registration,
        s.ocpp_version || "—",
        s.boot ? `${s.boot.vendor} ${s.boot.model}` : "—",
        seen,
      ], { "data-station": s.station_id });
      rows.set(s.station_id, { status, seen });
      return tr;
    });
    fill(listing, page.items.length ? table(HEADERS, body, { caption: "Stations" }) : h("p.muted", {}, "No stations match."));
    return page.next_cursor;
  });

  const refreshStats = debounce(loadStats, 300);
  const refreshList = debounce(() => pager.reload().catch(() => {}), 500);

  const stream = new EventStream(
    { kinds: "station.connected,station.disconnected,station.booted,connector.status" },
    (event) => {
      if (event.kind === "connector.status") {
        // Only the faulted count depends on connector statuses.
        if (event.data && event.data.status === "Faulted") announce(`${event.station_id} faulted`);
        refreshStats();
        return;
      }
      const online = event.kind === "station.connected" || event.kind === "station.booted"
        ? true
        : event.data && event.data.current === false ? null : false;
      const known = rows.get(event.station_id);
      if (known && online !== null) {
        fill(known.status, onlineBadge(online));
        fill(known.seen, when(event.at));
      } else if (!known) {
        refreshList();
      }
      if (event.kind !== "station.booted") announce(`${event.station_id} ${online ? "connected" : "disconnected"}`);
      refreshStats();
    },
    { onState: live.set },
  );
  ctx.streams.push(stream);

  fill(
    ctx.main,
    h("h1", {}, "Network ", live.element),
    cards,
    h("h2", {}, "Stations"),
    filters,
    listing,
    pager.element,
  );
  loadStats();
  pager.first().catch((error) => fill(listing, errorView(error)));
}
