// What every page uses: the API (with the signed-in user's token), a DOM builder that only ever makes text nodes
// from data, and a few page parts.

import { t } from "/viewer/i18n.js";

export const API = "/api/v1";
export const TOKEN = "wz-token"; // kept for this browser tab only

let signedOut = () => {};

// The page's answer to a token the server no longer takes (it expired, or the user was disabled).
export function onSignedOut(handler) {
  signedOut = handler;
}

// -- the API -------------------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function api(path, { method = "GET", json, form } = {}) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = new URLSearchParams(form);
  }
  const answer = await fetch(API + path, { method, headers, body });
  if (answer.status === 401 && path !== "/auth/token" && token) {
    sessionStorage.removeItem(TOKEN);
    signedOut();
    throw new ApiError(401, "signed out");
  }
  if (!answer.ok) {
    let detail = answer.statusText;
    try {
      const problem = await answer.json();
      detail = problem.detail || problem.title || detail;
    } catch {
      // not a problem document: keep the status text
    }
    throw new ApiError(answer.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return answer.status === 204 ? null : answer.json();
}

// -- building the page ---------------------------------------------------------------------------------------

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function field(labelKey, input) {
  const id = input.id || `f-${labelKey.replace(/\W/g, "-")}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, t(labelKey)), input);
}

let sayTimer = null;

// A short message in the corner, read out by screen readers; it goes away by itself.
export function say(message) {
  document.getElementById("status").textContent = message;
  clearTimeout(sayTimer);
  if (message) sayTimer = setTimeout(() => { document.getElementById("status").textContent = ""; }, 8000);
}

export function table(captionKey, headKeys, rows) {
  return h("table", {},
    h("caption", { class: "visually-hidden" }, t(captionKey)),
    h("thead", {}, h("tr", {}, headKeys.map((key) => h("th", { scope: "col" }, t(key))))),
    h("tbody", {}, rows));
}

// A file of a capture, read with the signed-in user's token (for the page's own use; players and download links
// use a media ticket instead, since they cannot send a header).
export async function readFile(path, { range } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` };
  if (range) headers.Range = range;
  const answer = await fetch(API + path, { headers });
  if (!answer.ok) throw new ApiError(answer.status, answer.statusText);
  return answer;
}

// Copy a digest: the Clipboard API where the page is a secure context, else the old selection command.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { "aria-hidden": "true", class: "visually-hidden" }, text);
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

export function formatBytes(size) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function formatSeconds(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(whole / 3600);
  const minutes = String(Math.floor((whole % 3600) / 60)).padStart(2, "0");
  const rest = String(whole % 60).padStart(2, "0");
  return hours ? `${hours}:${minutes}:${rest}` : `${minutes}:${rest}`;
}

// A URL as a person reads it: percent-escapes of text decoded (a Chinese search term, not a wall of %E6%90...).
// What could hide or reorder text (controls, bidirectional overrides, zero-width marks, spaces) and "%25" stay
// escaped, so the text read is the URL requested; the host keeps its punycode form. The exact URL is the title.
export function readableUrl(url) {
  try {
    return url.split(/%25/i).map((part) => decodeURI(part)
      .replace(/[\p{C}\p{Z}\s]/gu, (character) => encodeURIComponent(character))).join("%25");
  } catch {
    return url; // not valid escapes: shown exactly as it came
  }
}

export function urlText(url, tag = "span") {
  const readable = readableUrl(url);
  return readable === url ? h(tag, {}, url) : h(tag, { title: url, "data-url": url }, readable);
}
