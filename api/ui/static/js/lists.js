// Transactions (list, detail, CSV export), tokens, webhooks.

import { api, download, seg } from "./api.js";
import { facts, field, fill, h, row, table, when } from "./dom.js";
import { energyChart } from "./chart.js";
import { Pager, answerBox, errorView, run } from "./common.js";

const TX_HEADERS = ["Transaction", "Station", "State", "Started", "Ended", "Energy", "Cost"];

function kwh(wh) {
  return wh === null || wh === undefined ? "—" : `${(wh / 1000).toFixed(3)} kWh`;
}

export function transactions(ctx) {
  const station = h("input", { name: "station", maxlength: 48 });
  const state = h("select", { name: "state" }, ["", "Active", "Ended"].map((v) => h("option", { value: v }, v || "any")));
  const token = h("input", { name: "token", maxlength: 36 });
  const after = h("input", { name: "started_after", placeholder: "2026-01-15T00:00:00Z" });
  const before = h("input", { name: "started_before", placeholder: "2026-02-01T00:00:00Z" });
  const listing = h("div");
  const exportBox = answerBox();
  const query = () => ({
    station: station.value.trim(), state: state.value, token: token.value.trim(),
    started_after: after.value.trim(), started_before: before.value.trim(),
  });
  const pager = new Pager(async (cursor) => {
    const page = await api("/transactions", { query: { ...query(), cursor, limit: 50 } });
    fill(listing, page.items.length
      ? table(TX_HEADERS, page.items.map((tx) => row(TX_HEADERS, [
        h("a", { href: `#/transactions/${seg(tx.station_id)}/${seg(tx.transaction_id)}` }, tx.transaction_id),
        h("a", { href: `#/stations/${seg(tx.station_id)}` }, tx.station_id),
        tx.state, when(tx.started_at), when(tx.ended_at), kwh(tx.energy_wh),
        tx.cost ? `${tx.cost.total} ${tx.cost.currency}` : "—",
      ])), { caption: "Transactions" })
      : h("p.muted", {}, "No transactions match."));
    return page.next_cursor;
  });
  const exportButton = h("button.secondary", { type: "button" }, "Export CSV");
  exportButton.addEventListener("click", () => run(exportBox, exportButton, async () => {
    const blob = await download("/transactions.csv", query(), "transactions.csv");
    return { outcome: "downloaded", bytes: blob.size };
  }));
  fill(
    ctx.main,
    h("h1", {}, "Transactions"),
    h("form.row", { role: "search", onsubmit: (e) => { e.preventDefault(); pager.first().catch((err) => fill(listing, errorView(err))); } },
      field("Station", station), field("State", state), field("Token", token),
      field("Started after", after), field("Started before", before),
      h("button", { type: "submit" }, "Filter"), exportButton),
    exportBox,
    listing,
    pager.element,
  );
  pager.first().catch((error) => fill(listing, errorView(error)));
}

export async function transaction(ctx, stationId, txId) {
  let tx;
  try {
    tx = await api(`/transactions/${seg(stationId)}/${seg(txId)}`);
  } catch (error) {
    fill(ctx.main, h("h1", {}, `Transaction ${txId}`), errorView(error));
    return;
  }
  const start = tx.meter_start_wh || 0;
  const timeline = [
    tx.started_at ? { at: tx.started_at, what: "started" } : null,
    ...tx.readings.map((r) => ({ at: r.at, what: `reading ${kwh(r.wh - start)}${r.context ? ` (${r.context})` : ""}` })),
    tx.ended_at ? { at: tx.ended_at, what: `ended${tx.stop_reason ? `: ${tx.stop_reason}` : ""}` } : null,
  ].filter(Boolean);
  fill(
    ctx.main,
    h("h1", {}, `Transaction ${tx.transaction_id}`),
    h("div.grid", {},
      h("section.panel", { "aria-label": "Facts" }, facts([
        ["Station", h("a", { href: `#/stations/${seg(tx.station_id)}` }, tx.station_id)],
        ["State", tx.state], ["Token", tx.id_token], ["Energy", kwh(tx.energy_wh)],
        ["Cost", tx.cost ? `${tx.cost.total} ${tx.cost.currency} (energy ${tx.cost.energy}, time ${tx.cost.time}, fee ${tx.cost.fee})` : "—"],
        ["Started", when(tx.started_at)], ["Ended", when(tx.ended_at)], ["Stop reason", tx.stop_reason],
      ])),
      h("section", { "aria-label": "Energy chart" },
        energyChart(tx.readings.map((r) => ({ at: r.at, wh: r.wh - start })), `Energy of transaction ${tx.transaction_id}`))),
    h("h2", {}, "Timeline"),
    h("ol", {}, timeline.map((item) => h("li", {}, h("time", { datetime: item.at }, when(item.at)), " — ", item.what))),
  );
}

const TOKEN_HEADERS = ["Token", "Status", "Type", "Expiry", "Group", "Actions"];

export function tokens(ctx) {
  const prefix = h("input", { name: "prefix", type: "search", maxlength: 36 });
  const listing = h("div");
  const box = answerBox();
  const save = (id, record) => api(`/tokens/${seg(id)}`, { method: "PUT", body: record });
  const recordOf = (t, change) => ({ status: t.status, token_type: t.token_type, expiry: t.expiry, group_id: t.group_id, ...change });
  const pager = new Pager(async (cursor) => {
    const page = await api("/tokens", { query: { cursor, limit: 50, prefix: prefix.value.trim() } });
    fill(listing, page.items.length
      ? table(TOKEN_HEADERS, page.items.map((t) => {
        const expiry = h("input", { value: t.expiry || "", "aria-label": `Expiry of ${t.id_token}`, placeholder: "ISO 8601" });
        const blocked = t.status === "Blocked";
        const actions = ctx.operate
          ? h("div.row", {},
            h("button.secondary", { type: "button", onclick: () => run(box, null, async () => { const r = await save(t.id_token, recordOf(t, { status: blocked ? "Accepted" : "Blocked" })); pager.reload(); return r; }) }, blocked ? `Unblock ${t.id_token}` : `Block ${t.id_token}`),
            expiry,
            h("button.secondary", { type: "button", onclick: () => run(box, null, async () => { const r = await save(t.id_token, recordOf(t, { expiry: expiry.value.trim() || null })); pager.reload(); return r; }) }, "Set expiry"),
            h("button.danger", { type: "button", onclick: () => run(box, null, async () => { await api(`/tokens/${seg(t.id_token)}`, { method: "DELETE" }); pager.reload(); return { outcome: "deleted", id_token: t.id_token }; }) }, `Delete ${t.id_token}`))
          : "—";
        return row(TOKEN_HEADERS, [t.id_token, t.status, t.token_type || "any", t.expiry || "—", t.group_id || "—", actions]);
      }), { caption: "Tokens" })
      : h("p.muted", {}, "No tokens match."));
    return page.next_cursor;
  });
  const newId = h("input", { name: "id_token", required: true, maxlength: 36 });
  const newStatus = h("select", { name: "status" }, ["Accepted", "Blocked", "Expired", "Invalid"].map((v) => h("option", { value: v }, v)));
  const newType = h("select", { name: "token_type" }, ["", "Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "NoAuthorization"].map((v) => h("option", { value: v }, v || "any")));
  const newExpiry = h("input", { name: "expiry", placeholder: "ISO 8601 (optional)" });
  const addButton = h("button", { type: "submit" }, "Add token");
  const add = ctx.operate
    ? h("form", { onsubmit: (e) => { e.preventDefault(); run(box, addButton, async () => {
      const r = await save(newId.value.trim(), { status: newStatus.value, token_type: newType.value || null, expiry: newExpiry.value.trim() || null });
      pager.first();
      return r;
    }); } }, h("fieldset", {}, h("legend", {}, "Add or replace a token"), h("div.row", {},
      field("Token", newId), field("Status", newStatus), field("Type", newType), field("Expiry", newExpiry), addButton)))
    : null;
  fill(
    ctx.main,
    h("h1", {}, "Tokens"),
    add,
    box,
    h("form.row", { role: "search", onsubmit: (e) => { e.preventDefault(); pager.first().catch((err) => fill(listing, errorView(err))); } },
      field("Token starts with", prefix), h("button", { type: "submit" }, "Search")),
    listing,
    pager.element,
  );
  pager.first().catch((error) => fill(listing, errorView(error)));
}

const HOOK_HEADERS = ["URL", "Events", "Stations", "Active", "Deliveries"];
const DELIVERY_HEADERS = ["Event", "Kind", "State", "Attempts", "Last status", "Last error", "Next try"];

export function webhooks(ctx) {
  const listing = h("div");
  const deliveries = h("div", { "aria-live": "polite" });
  const pager = new Pager(async (cursor) => {
    const page = await api("/webhooks", { query: { cursor, limit: 50 } });
    fill(listing, page.items.length
      ? table(HOOK_HEADERS, page.items.map((w) => row(HOOK_HEADERS, [
        w.url, w.events.join(", "), w.station_ids ? w.station_ids.join(", ") : "all", w.active ? "yes" : "paused",
        h("button.secondary", { type: "button", onclick: () => showDeliveries(w) }, `Deliveries of ${w.description || w.id}`),
      ])), { caption: "Webhooks" })
      : h("p.muted", {}, "No webhooks."));
    return page.next_cursor;
  });
  async function showDeliveries(w) {
    try {
      const page = await api(`/webhooks/${seg(w.id)}/deliveries`, { query: { limit: 50 } });
      fill(deliveries, h("h2", {}, `Deliveries to ${w.url}`), page.items.length
        ? table(DELIVERY_HEADERS, page.items.map((d) => row(DELIVERY_HEADERS, [
          d.event_id, d.event_kind, h(`span.${d.state === "delivered" ? "ok" : d.state === "dead" ? "bad" : "warn"}`, {}, d.state),
          String(d.attempts), d.last_status ?? "—", d.last_error || "—", when(d.next_attempt_at),
        ])))
        : h("p.muted", {}, "No deliveries yet."));
    } catch (error) {
      fill(deliveries, errorView(error));
    }
  }
  fill(ctx.main, h("h1", {}, "Webhooks"), listing, pager.element, deliveries);
  pager.first().catch((error) => fill(listing, errorView(error)));
}
