// The operator API over fetch. The key lives in sessionStorage (gone when the tab closes) and
// goes in the Authorization header of every request: no cookie, so no CSRF surface.

const KEY = "csms.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

/** An answer that is not 2xx, in the API's {code, message, details} shape. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = (body && body.code) || "http_error";
    this.details = (body && body.details) || {};
    this.body = body;
  }
}

export function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** Build "/v1/path?query" leaving out empty parameters. */
export function url(path, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const qs = params.toString();
  return `/v1${path}${qs ? `?${qs}` : ""}`;
}

export function seg(value) {
  return encodeURIComponent(value);
}

/**
 * fetch one API route; resolves with the JSON body. A call route's 504 (the station did not
 * answer) still has an outcome body: `acceptStatus` lists statuses to resolve with.
 */
export async function api(path, { method = "GET", query, body, acceptStatus = [] } = {}) {
  const headers = authHeaders(body !== undefined ? { "Content-Type": "application/json" } : {});
  const response = await fetch(url(path, query), {
    method,
    headers,
    body: body !== undefined ? JSON.stringify(body) : undefined,
    credentials: "omit",
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (response.status === 401) {
    window.dispatchEvent(new CustomEvent("csms:unauthorized"));
  }
  if (!response.ok && !acceptStatus.includes(response.status)) throw new ApiError(response.status, data);
  return data;
}

/** Download a route's answer as a file (the header cannot ride on a plain link). */
export async function download(path, query, filename) {
  const response = await fetch(url(path, query), { headers: authHeaders(), credentials: "omit" });
  if (!response.ok) {
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    throw new ApiError(response.status, data);
  }
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = href;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
  return blob;
}

/**
 * Whether the key may operate (send calls, change tokens). Nothing tells a key its scope, so
 * ask a write route with a body the schema refuses: the scope check answers 403 before the
 * body is validated (422), and nothing is written either way.
 */
export async function canOperate() {
  try {
    await api("/tokens/scope-check", { method: "PUT", body: { status: 0 } });
    return true;
  } catch (error) {
    return !(error instanceof ApiError && error.status === 403);
  }
}
