// One station: boot info, connectors and active transactions (live), commands, device model,
// configuration, certificates, recent calls, the message log and security events (live).

import { api, seg } from "./api.js";
import { announce, facts, field, fill, h, json, onlineBadge, row, table, when } from "./dom.js";
import { energyChart } from "./chart.js";
import { EventStream } from "./sse.js";
import { answerBox, debounce, errorView, liveState, run } from "./common.js";
import { schemaForm } from "./schemaform.js";

const CONNECTOR_HEADERS = ["EVSE", "Connector", "Status", "Error", "Since"];

export async function station(ctx, stationId) {
  const base = `/stations/${seg(stationId)}`;
  let detail;
  try {
    detail = await api(base);
  } catch (error) {
    fill(ctx.main, h("h1", {}, stationId), errorView(error));
    return;
  }
  const live = liveState();
  const head = h("div");
  const connectors = h("div", { "aria-live": "polite" });
  const transactions = h("div");
  const charts = new Map(); // transaction id -> {points, holder, energy}

  function renderHead() {
    fill(
      head,
      h("h1", {}, detail.station_id, " ", h("span", { id: "station-online" }, onlineBadge(detail.online)), " ", live.element),
      h(
        "div.grid",
        {},
        h("section.panel", { "aria-label": "Station" }, facts([
          ["OCPP version", detail.ocpp_version],
          ["Registration", detail.registration],
          ["Security profile", detail.pending_security_profile == null
            ? String(detail.security_profile)
            : `${detail.security_profile} (accepted ${detail.pending_security_profile}, not yet connected with it)`],
          ["Connected at", when(detail.connected_at)],
          ["Last seen", when(detail.last_seen)],
          ["Gateway", detail.gateway],
        ])),
        h("section.panel", { "aria-label": "Boot information" }, detail.boot
          ? facts([
            ["Vendor", detail.boot.vendor],
            ["Model", detail.boot.model],
            ["Serial number", detail.boot.serial_number],
            ["Firmware", detail.boot.firmware_version],
            ["Boot reason", detail.boot.reason],
            ["Booted at", when(detail.last_boot_at)],
          ])
          : h("p.muted", {}, "No BootNotification yet.")),
      ),
    );
  }

  function renderConnectors() {
    fill(
      connectors,
      detail.connectors.length
        ? table(
          CONNECTOR_HEADERS,
          detail.connectors.map((c) => row(CONNECTOR_HEADERS, [
            String(c.evse_id), String(c.connector_id),
            h("strong", { "data-connector-status": `${c.evse_id}/${c.connector_id}` }, c.status),
            c.error_code || "—", when(c.at),
          ])),
          { caption: "Connectors" },
        )
        : h("p.muted", {}, "No connector has reported a status yet."),
    );
  }

  async function renderTransactions() {
    charts.clear();
    const items = await Promise.all(detail.active_transactions.map(async (tx) => {
      let readings = [];
      try {
        readings = (await api(`/transactions/${seg(stationId)}/${seg(tx.transaction_id)}`)).readings;
      } catch {
        readings = [];
      }
      const points = readings.map((r) => ({ at: r.at, wh: r.wh - (tx.meter_start_wh || 0) }));
      const holder = h("div.chart-holder");
      const energy = h("span", { "data-energy": tx.transaction_id }, formatWh(tx.energy_wh));
      const entry = { points, holder, energy };
      charts.set(tx.transaction_id, entry);
      drawChart(tx.transaction_id);
      const box = answerBox();
      const stop = h("button.danger", { type: "button" }, "Stop transaction");
      stop.addEventListener("click", () => run(box, stop, () => api(
        `${base}/transactions/${seg(tx.transaction_id)}/stop`, { method: "POST", acceptStatus: [504] },
      )));
      return h(
        "section.panel",
        { "aria-label": `Transaction ${tx.transaction_id}` },
        h("h3", {}, "Transaction ", h("a", { href: `#/transactions/${seg(stationId)}/${seg(tx.transaction_id)}` }, tx.transaction_id)),
        facts([["Started", when(tx.started_at)], ["Token", tx.id_token], ["EVSE / connector", `${tx.evse_id ?? "—"} / ${tx.connector_id ?? "—"}`], ["Energy", energy]]),
        holder,
        ctx.operate ? h("div", {}, stop, box) : null,
      );
    }));
    fill(transactions, items.length ? items : h("p.muted", {}, "No transaction running."));
  }

  function drawChart(txId) {
    const entry = charts.get(txId);
    if (entry) fill(entry.holder, energyChart(entry.points, `Energy of transaction ${txId}`));
  }

  // The newest status each connector's events gave. A reload's answer may have been read
  // before the store had the latest one: a status from a newer event wins over it.
  const latestStatus = new Map();

  function keepNewerStatuses() {
    for (const status of latestStatus.values()) {
      const found = detail.connectors.find((c) => c.evse_id === status.evse_id && c.connector_id === status.connector_id);
      if (!found) detail.connectors.push({ ...status });
      else if (Date.parse(status.at) >= Date.parse(found.at)) Object.assign(found, status);
    }
  }

  const reload = debounce(async () => {
    try {
      detail = await api(base);
      keepNewerStatuses();
      renderHead();
      renderConnectors();
      await renderTransactions();
    } catch {
      /* the next event tries again */
    }
  }, 300);

  const stream = new EventStream({ station_id: stationId }, (event) => {
    if (event.station_id !== stationId) return;
    const d = event.data || {};
    switch (event.kind) {
      case "connector.status": {
        const found = detail.connectors.find((c) => c.evse_id === d.evse_id && c.connector_id === d.connector_id);
        const status = { evse_id: d.evse_id, connector_id: d.connector_id, status: d.status, error_code: d.error_code, at: event.at };
        latestStatus.set(`${d.evse_id}/${d.connector_id}`, status);
        if (found) Object.assign(found, status);
        else detail.connectors.push({ ...status });
        renderConnectors();
        announce(`connector ${d.evse_id}/${d.connector_id}: ${d.status}`);
        break;
      }
      case "transaction.updated": {
        const entry = charts.get(d.transaction_id);
        if (!entry) { reload(); break; }
        entry.points.push({ at: event.at, wh: d.energy_wh });
        entry.energy.textContent = formatWh(d.energy_wh) + (d.cost ? ` · ${d.cost} ${d.currency || ""}` : "");
        drawChart(d.transaction_id);
        break;
      }
      case "security.event":
        security.add(event);
        announce(`${stationId}: security event ${d.type}`);
        break;
      case "station.connected":
      case "station.disconnected":
      case "station.booted":
      case "transaction.started":
      case "transaction.ended":
        announce(`${stationId}: ${event.kind}`);
        reload();
        break;
      default:
        break;
    }
  }, { onState: live.set });
  ctx.streams.push(stream);
  const security = securityEvents(stationId);
  const messages = messageLog(ctx, base);

  renderHead();
  renderConnectors();
  fill(
    ctx.main,
    head,
    h("h2", {}, "Connectors"),
    connectors,
    h("h2", {}, "Active transactions"),
    transactions,
    ctx.operate ? commands(base, detail) : h("p.muted", { id: "read-only" }, "This key may read only: commands are hidden."),
    sections(base, detail),
    security.element,
    messages,
  );
  await renderTransactions();
}

const LOG_ROWS = 50;
const MESSAGE_HEADERS = ["Time", "Direction", "Type", "Action", "Content"];

/** The station's recent OCPP frames (newest first), then each new one as it is logged. */
function messageLog(ctx, base) {
  const body = h("tbody");
  const holder = h("div", {}, h("p.muted", {}, "loading…"));
  const seen = new Set();
  const live = liveState();

  function entryRow(m) {
    const content = m.type === "error"
      ? `${m.error_code || ""} ${m.error_description || ""}`.trim()
      : JSON.stringify(m.payload ?? null);
    return row(MESSAGE_HEADERS, [
      when(m.time),
      m.direction === "in" ? "from station" : "to station",
      m.type + (m.outcome && m.outcome !== "result" ? ` (${m.outcome})` : ""),
      m.action || "—",
      h("code.frame", {}, content.length > 300 ? `${content.slice(0, 300)}…` : content),
    ], { "data-message": m.message_id, "data-direction": m.direction });
  }

  function add(m, { newest }) {
    if (seen.has(m.id)) return;
    seen.add(m.id);
    if (newest) body.prepend(entryRow(m));
    else body.append(entryRow(m));
    while (body.children.length > LOG_ROWS) body.lastElementChild.remove();
  }

  function show() {
    fill(holder, h("div.table-wrap", {}, h("table.stack", {},
      h("caption.visually-hidden", {}, "Message log"),
      h("thead", {}, h("tr", {}, MESSAGE_HEADERS.map((t) => h("th", { scope: "col" }, t)))),
      body)));
  }

  const streams = ctx.streams; // this page's: replaced when the operator navigates away
  api(`${base}/messages`, { query: { limit: LOG_ROWS } }).then((page) => {
    if (ctx.streams !== streams) return;
    for (const m of page.items) add(m, { newest: false });
    show();
    // Followed only once the log answered: a log that is off (409) is not asked again.
    const follow = new EventStream({ follow: true }, (m) => {
      add(m, { newest: true });
    }, { onState: live.set, path: `${base}/messages` });
    streams.push(follow);
  }).catch((error) => fill(holder, error.code === "message_log_off"
    ? h("p.muted", {}, "The message log is off (setting message_log).")
    : errorView(error)));

  return h(
    "section",
    { id: "message-log", "aria-labelledby": "message-log-title" },
    h("h2", { id: "message-log-title" }, "Message log ", live.element),
    holder,
  );
}

const SECURITY_HEADERS = ["At", "Type", "Technical info"];

/** The station's security events (SecurityEventNotification), newest first; the station's
 * event stream adds new ones through `add`. */
function securityEvents(stationId) {
  const body = h("tbody");
  const holder = h("div", {}, h("p.muted", {}, "loading…"));
  const seen = new Set();
  let shown = false;

  function show() {
    if (shown) return;
    shown = true;
    fill(holder, h("div.table-wrap", {}, h("table.stack", {},
      h("caption.visually-hidden", {}, "Security events"),
      h("thead", {}, h("tr", {}, SECURITY_HEADERS.map((t) => h("th", { scope: "col" }, t)))),
      body)));
  }

  function add(event, { newest = true } = {}) {
    if (seen.has(event.id)) return;
    seen.add(event.id);
    const d = event.data || {};
    const tr = row(SECURITY_HEADERS, [when(event.at), d.type || "—", d.tech_info || "—"], { "data-security-event": event.id });
    if (newest) body.prepend(tr);
    else body.append(tr);
    while (body.children.length > LOG_ROWS) body.lastElementChild.remove();
    show();
  }

  api("/events", { query: { follow: false, kinds: "security.event", station_id: stationId, limit: 100 } })
    .then((page) => {
      // The page is oldest first: show the newest on top.
      for (const event of page.items.slice().reverse()) add(event, { newest: false });
      if (!page.items.length && !shown) fill(holder, h("p.muted", { "data-empty": "" }, "No security events."));
    })
    .catch((error) => fill(holder, errorView(error)));

  return {
    add,
    element: h("section", { id: "security-events", "aria-labelledby": "security-title" },
      h("h2", { id: "security-title" }, "Security events"), holder),
  };
}

function formatWh(wh) {
  return wh === null || wh === undefined ? "—" : `${(wh / 1000).toFixed(3)} kWh`;
}

function num(input) {
  return input.value === "" ? undefined : Number(input.value);
}

/** A form that POSTs what `body()` builds and shows the station's answer under it. */
function commandForm(title, controls, action, id) {
  const box = answerBox();
  const submit = h("button", { type: "submit" }, title);
  const form = h(
    "form",
    { id, onsubmit: (e) => { e.preventDefault(); run(box, submit, action); } },
    h("fieldset", {}, h("legend", {}, title), h("div.row", {}, controls, submit)),
    box,
  );
  return form;
}

function commands(base, detail) {
  const v16 = detail.ocpp_version === "ocpp1.6";
  const post = (path, body) => api(`${base}${path}`, { method: "POST", body, acceptStatus: [504] });

  const token = h("input", { name: "id_token", required: true, maxlength: 36, value: "OPERATOR" });
  const startEvse = h("input", { name: "evse_id", type: "number", min: 1 });
  const remoteStart = commandForm("Remote start", [
    field("Token (idToken / idTag)", token),
    field(v16 ? "Connector (optional)" : "EVSE (optional)", startEvse),
  ], () => post("/remote-start", {
    id_token: token.value, [v16 ? "connector_id" : "evse_id"]: num(startEvse), wait: 30,
  }), "cmd-remote-start");

  const immediate = h("select", { name: "immediate" },
    h("option", { value: "true" }, "now"), h("option", { value: "false" }, "once idle"));
  const reset = commandForm("Reset", [field("When", immediate)],
    () => post("/reset", { immediate: immediate.value === "true" }), "cmd-reset");

  const unlockConnector = h("input", { name: "connector_id", type: "number", min: 1, value: 1, required: true });
  const unlockEvse = h("input", { name: "evse_id", type: "number", min: 1, value: v16 ? undefined : 1 });
  const unlock = commandForm("Unlock", [
    field("Connector", unlockConnector), v16 ? null : field("EVSE", unlockEvse),
  ], () => post("/unlock", { connector_id: num(unlockConnector), evse_id: v16 ? undefined : num(unlockEvse) }), "cmd-unlock");

  const operative = h("select", { name: "operative" },
    h("option", { value: "true" }, "Operative"), h("option", { value: "false" }, "Inoperative"));
  const availEvse = h("input", { name: "evse_id", type: "number", min: 0 });
  const availConnector = h("input", { name: "connector_id", type: "number", min: 0 });
  const availability = commandForm("Change availability", [
    field("Availability", operative), v16 ? null : field("EVSE (empty: station)", availEvse),
    field("Connector (optional)", availConnector),
  ], () => post("/availability", {
    operative: operative.value === "true", evse_id: v16 ? undefined : num(availEvse), connector_id: num(availConnector),
  }), "cmd-availability");

  const messages = v16
    ? ["BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StatusNotification"]
    : ["BootNotification", "LogStatusNotification", "FirmwareStatusNotification", "Heartbeat", "MeterValues", "SignChargingStationCertificate", "StatusNotification"];
  const message = h("select", { name: "message" }, messages.map((m) => h("option", { value: m }, m)));
  const trigger = commandForm("Trigger message", [field("Message", message)],
    () => post("/trigger", { message: message.value }), "cmd-trigger");

  const call = (action, payload) => api(`${base}/calls/${action}`, { method: "POST", body: payload, acceptStatus: [504] });
  let getVar;
  let setVar;
  if (v16) {
    const key = h("input", { name: "key", placeholder: "e.g. HeartbeatInterval" });
    getVar = commandForm("Get configuration", [field("Key (empty: all)", key)],
      () => call("GetConfiguration", key.value ? { key: [key.value] } : {}), "cmd-get-config");
    const setKey = h("input", { name: "key", required: true, maxlength: 50 });
    const setValue = h("input", { name: "value", required: true, maxlength: 500 });
    setVar = commandForm("Change configuration", [field("Key", setKey), field("Value", setValue)],
      () => call("ChangeConfiguration", { key: setKey.value, value: setValue.value }), "cmd-set-config");
  } else {
    const comp = h("input", { name: "component", required: true, value: "OCPPCommCtrlr" });
    const variable = h("input", { name: "variable", required: true, value: "HeartbeatInterval" });
    getVar = commandForm("Get variable", [field("Component", comp), field("Variable", variable)],
      () => call("GetVariables", { getVariableData: [{ component: { name: comp.value }, variable: { name: variable.value } }] }), "cmd-get-variable");
    const sComp = h("input", { name: "component", required: true, value: "OCPPCommCtrlr" });
    const sVar = h("input", { name: "variable", required: true, value: "HeartbeatInterval" });
    const sValue = h("input", { name: "value", required: true, maxlength: 1000 });
    setVar = commandForm("Set variable", [field("Component", sComp), field("Variable", sVar), field("Value", sValue)],
      () => call("SetVariables", { setVariableData: [{ component: { name: sComp.value }, variable: { name: sVar.value }, attributeValue: sValue.value }] }), "cmd-set-variable");
  }

  return h(
    "section",
    { "aria-labelledby": "commands-title" },
    h("h2", { id: "commands-title" }, "Commands"),
    h("div.grid", {}, remoteStart, reset, unlock, availability, trigger, getVar, setVar),
    genericCall(base, detail),
  );
}

/** Any CSMS-initiated action, with a form generated from its request schema. */
function genericCall(base, detail) {
  const version = detail.ocpp_version;
  const select = h("select", { name: "action" }, h("option", { value: "" }, "— choose an action —"));
  const holder = h("div.schema-form");
  const box = answerBox();
  const submit = h("button", { type: "submit", disabled: true }, "Send");
  let form = null;
  if (version) {
    api(`/schemas/${seg(version)}`).then((list) => {
      for (const action of list.actions) select.append(h("option", { value: action }, action));
    }).catch((error) => fill(holder, errorView(error)));
  }
  select.addEventListener("change", async () => {
    form = null;
    submit.disabled = true;
    fill(holder);
    if (!select.value) return;
    try {
      const schema = await api(`/schemas/${seg(version)}/${seg(select.value)}`);
      form = schemaForm(schema, `gen-${select.value}`);
      fill(holder, form.element);
      submit.disabled = false;
    } catch (error) {
      fill(holder, errorView(error));
    }
  });
  return h(
    "form",
    {
      id: "cmd-generic",
      onsubmit: (e) => {
        e.preventDefault();
        if (!form) return;
        run(box, submit, async () => api(`${base}/calls/${seg(select.value)}`, {
          method: "POST", body: form.value(), acceptStatus: [504],
        }));
      },
    },
    h("fieldset", {}, h("legend", {}, "Any OCPP call"), version
      ? [field(`Action (${version})`, select), holder, submit]
      : h("p.muted", {}, "The station has not connected yet: its version is unknown.")),
    box,
  );
}

/** Device model, configuration, certificates, calls: loaded when opened. */
function sections(base, detail) {
  const v16 = detail.ocpp_version === "ocpp1.6";
  const part = (title, load) => {
    const body = h("div", {}, h("p.muted", {}, "loading…"));
    const el = h("details", {}, h("summary", {}, title), body);
    el.addEventListener("toggle", () => {
      if (el.open) load().then((node) => fill(body, node)).catch((error) => fill(body, errorView(error)));
    });
    return el;
  };
  const varHeaders = ["Component", "Variable", "Value", "Updated"];
  return h(
    "section",
    { "aria-labelledby": "state-title" },
    h("h2", { id: "state-title" }, "What the CSMS knows"),
    v16
      ? part("Configuration", async () => {
        const conf = await api(`${base}/configuration`);
        const hd = ["Key", "Value", "Read-only", "Updated"];
        return conf.items.length
          ? table(hd, conf.items.map((k) => row(hd, [k.key, k.value ?? "—", k.readonly ? "yes" : "no", when(k.updated_at)])))
          : h("p.muted", {}, "Nothing reported yet (send GetConfiguration).");
      })
      : part("Device model", async () => {
        const page = await api(`${base}/variables`, { query: { limit: 100 } });
        return page.items.length
          ? table(varHeaders, page.items.map((v) => row(varHeaders, [
            `${v.component}${v.component_instance ? `/${v.component_instance}` : ""}${v.evse_id ? ` (EVSE ${v.evse_id})` : ""}`,
            `${v.variable}${v.variable_instance ? `/${v.variable_instance}` : ""}`,
            v.attributes.map((a) => `${a.type}: ${a.value ?? "—"}`).join(", "),
            when(v.attributes[0] && v.attributes[0].updated_at),
          ])))
          : h("p.muted", {}, "Nothing reported yet (send GetBaseReport).");
      }),
    part("Certificates", async () => {
      const certs = await api(`${base}/certificates`);
      const hd = ["Type", "Serial number", "Updated"];
      return certs.items.length
        ? table(hd, certs.items.map((c) => row(hd, [c.certificate_type, c.certificate_hash_data.serial_number, when(c.updated_at)])))
        : h("p.muted", {}, "None reported (send GetInstalledCertificateIds).");
    }),
    part("Recent calls", async () => {
      const page = await api(`${base}/calls`, { query: { limit: 50 } });
      const hd = ["Sent", "Action", "Outcome", "Answer"];
      return page.items.length
        ? table(hd, page.items.map((c) => row(hd, [when(c.sent_at ? new Date(c.sent_at * 1000).toISOString() : null), c.action, c.outcome,
          c.error_code ? `${c.error_code} ${c.error_description || ""}` : json(c.payload)])))
        : h("p.muted", {}, "No calls recorded.");
    }),
  );
}
