// Start-up: log in (form or ?key=), hash routing, one page at a time.

import { ApiError, api, canOperate, clearKey, getKey, setKey } from "./api.js";
import { field, fill, h } from "./dom.js";
import { overview } from "./overview.js";
import { station } from "./station.js";
import { tokens, transaction, transactions, webhooks } from "./lists.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const logout = document.getElementById("logout");
let ctx = null;

function takeKeyFromAddress() {
  const params = new URLSearchParams(window.location.search);
  const key = params.get("key");
  if (!key) return;
  setKey(key);
  params.delete("key");
  const rest = params.toString();
  // The key must not stay in the address bar, the history or a bookmark.
  window.history.replaceState(null, "", `${window.location.pathname}${rest ? `?${rest}` : ""}${window.location.hash}`);
}

function loginPage(message) {
  nav.hidden = true;
  logout.hidden = true;
  document.getElementById("who").textContent = "";
  const key = h("input", { type: "password", name: "key", required: true, autocomplete: "off", spellcheck: "false" });
  const error = h("p.error", { role: "alert" }, message || "");
  fill(
    main,
    h("section.login", {},
      h("h1", {}, "Log in"),
      h("form", {
        onsubmit: (e) => {
          e.preventDefault();
          setKey(key.value.trim());
          start();
        },
      },
      field("API key", key),
      h("p.muted", {}, "Kept in this tab only (sessionStorage) and sent as a Bearer header."),
      h("button", { type: "submit" }, "Log in"),
      error)),
  );
  key.focus();
}

async function start() {
  if (!getKey()) {
    loginPage();
    return;
  }
  try {
    await api("/stats");
  } catch (error) {
    clearKey();
    loginPage(error instanceof ApiError && error.status === 401 ? "That key is not valid." : `Cannot reach the API: ${error.message}`);
    return;
  }
  ctx = { main, operate: await canOperate(), streams: [] };
  document.getElementById("who").textContent = ctx.operate ? "operator" : "read-only";
  nav.hidden = false;
  logout.hidden = false;
  route();
}

function route() {
  if (!ctx) return;
  for (const stream of ctx.streams) stream.close();
  ctx.streams = [];
  const hash = window.location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  for (const link of nav.querySelectorAll("a")) {
    const target = link.getAttribute("href").replace(/^#\/?/, "");
    if ((target === "" && (parts[0] === "" || parts[0] === "stations")) || (target && target === parts[0])) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  fill(main, h("p.muted", {}, "loading…"));
  if (parts[0] === "stations" && parts[1]) station(ctx, parts[1]);
  else if (parts[0] === "transactions" && parts[2]) transaction(ctx, parts[1], parts[2]);
  else if (parts[0] === "transactions") transactions(ctx);
  else if (parts[0] === "tokens") tokens(ctx);
  else if (parts[0] === "webhooks") webhooks(ctx);
  else overview(ctx);
}

window.addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
window.addEventListener("csms:unauthorized", () => {
  if (!ctx) return;
  for (const stream of ctx.streams) stream.close();
  ctx = null;
  clearKey();
  loginPage("The key was refused (revoked or expired): log in again.");
});
logout.addEventListener("click", () => {
  if (ctx) for (const stream of ctx.streams) stream.close();
  ctx = null;
  clearKey();
  loginPage();
});

takeKeyFromAddress();
start();
