// The viewer: a few pages over the custody service's HTTP API (/api/v1). Everything from the server is put on the
// page as text (never as HTML), so a case title or a URL can never run as script.

import { formatTime, language, setLanguage, t } from "/viewer/i18n.js";

const API = "/api/v1";
const TOKEN = "wz-token"; // kept for this browser tab only

// -- the API -------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { method = "GET", json, form } = {}) {
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
  if (answer.status === 401 && path !== "/auth/token") {
    sessionStorage.removeItem(TOKEN);
    me = null;
    go("#/signin");
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

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function field(labelKey, input) {
  const id = input.id || `f-${labelKey.replace(/\W/g, "-")}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, t(labelKey)), input);
}

function say(message) {
  document.getElementById("status").textContent = message;
}

function show(...content) {
  const main = document.getElementById("app");
  main.replaceChildren(...content);
}

function table(captionKey, headKeys, rows) {
  return h("table", {},
    h("caption", { class: "visually-hidden" }, t(captionKey)),
    h("thead", {}, h("tr", {}, headKeys.map((key) => h("th", { scope: "col" }, t(key))))),
    h("tbody", {}, rows));
}

// -- who is signed in ----------------------------------------------------------------------------------------

let me = null;

async function whoAmI() {
  if (me || !sessionStorage.getItem(TOKEN)) return me;
  me = await api("/me");
  return me;
}

function drawBar() {
  document.title = t("app.title");
  document.documentElement.lang = language() === "zh" ? "zh-CN" : "en";
  for (const button of document.querySelectorAll("[data-lang]")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === language()));
  }
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (me) {
    nav.replaceChildren(h("a", { href: "#/cases" }, t("nav.cases")));
    who.replaceChildren(`${me.name} · ${t(`role.${me.role}`)} `,
      h("button", { type: "button", class: "link", onclick: signOut }, t("nav.signout")));
  } else {
    nav.replaceChildren();
    who.replaceChildren();
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN);
  me = null;
  go("#/signin");
}

// -- pages -----------------------------------------------------------------------------------------------------

function signInPage() {
  const name = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password",
    required: true });
  const problem = h("p", { class: "problem", role: "alert" });
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      const token = await api("/auth/token", { method: "POST",
        form: { username: name.value, password: password.value } });
      sessionStorage.setItem(TOKEN, token.access_token);
      me = null;
      await whoAmI();
      go("#/cases");
    } catch (error) {
      problem.textContent = t("signin.failed", { detail: error.message });
    }
  } },
  h("h1", {}, t("signin.title")),
  field("signin.name", name),
  field("signin.password", password),
  problem,
  h("button", { type: "submit", class: "primary" }, t("signin.submit")));
  show(form);
  name.focus();
}

function stateBadge(state) {
  return h("span", { class: `badge state-${state}` }, t(`state.${state}`));
}

async function casesPage() {
  const cases = await api("/cases");
  const search = h("input", { type: "search", id: "case-search", placeholder: t("cases.search") });
  const body = h("tbody");
  const empty = h("p", { class: "empty" });
  const draw = () => {
    const words = search.value.trim().toLowerCase();
    const shown = cases.filter((c) => !words ||
      [c.id, c.title, c.reference].some((text) => (text || "").toLowerCase().includes(words)));
    body.replaceChildren(...shown.map((c) => h("tr", {},
      h("td", { class: "id" }, h("a", { href: `#/cases/${encodeURIComponent(c.id)}` }, c.id)),
      h("td", { class: "wrap" }, c.title),
      h("td", {}, stateBadge(c.state)),
      h("td", {}, t(`role.${c.your_role}`)),
      h("td", {}, formatTime(c.created_at)))));
    empty.textContent = shown.length ? "" : t(cases.length ? "cases.none_match" : "cases.none");
  };
  search.addEventListener("input", draw);
  draw();
  const list = h("table", {},
    h("caption", { class: "visually-hidden" }, t("cases.title")),
    h("thead", {}, h("tr", {}, ["cases.id", "cases.case_title", "cases.state", "cases.role", "cases.created"]
      .map((key) => h("th", { scope: "col" }, t(key))))),
    body);
  const parts = [h("h1", {}, t("cases.title")), field("cases.search", search), list, empty];
  if (me && me.role === "investigator") parts.push(newCaseForm());
  show(...parts);
}

function newCaseForm() {
  const title = h("input", { name: "title", required: true, maxlength: 200 });
  const description = h("textarea", { name: "description", rows: 3, maxlength: 10000 });
  const reference = h("input", { name: "reference", maxlength: 200 });
  const problem = h("p", { class: "problem", role: "alert" });
  return h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const body = { title: title.value, description: description.value };
    if (reference.value.trim()) body.reference = reference.value;
    try {
      const made = await api("/cases", { method: "POST", json: body });
      say(t("cases.created_ok", { id: made.id }));
      go(`#/cases/${encodeURIComponent(made.id)}`);
    } catch (error) {
      problem.textContent = t("error.generic", { detail: error.message });
    }
  } },
  h("h2", {}, t("cases.new")),
  field("cases.new_title", title),
  field("cases.new_description", description),
  field("cases.new_reference", reference),
  problem,
  h("button", { type: "submit", class: "primary" }, t("cases.create")));
}

async function casePage(caseId) {
  const [found, captures] = await Promise.all([
    api(`/cases/${encodeURIComponent(caseId)}`),
    api(`/cases/${encodeURIComponent(caseId)}/captures`),
  ]);
  const facts = h("dl", { class: "facts" },
    h("dt", {}, t("case.state")), h("dd", {}, stateBadge(found.state)),
    h("dt", {}, t("case.description")), h("dd", { class: "wrap" }, found.description || "—"),
    h("dt", {}, t("case.reference")), h("dd", { class: "wrap" }, found.reference || "—"),
    found.outcome ? [h("dt", {}, t("case.outcome")), h("dd", { class: "wrap" }, found.outcome)] : [],
    h("dt", {}, t("case.legal_hold")),
    h("dd", {}, t(found.legal_hold ? "case.legal_hold_on" : "case.legal_hold_off")),
    h("dt", {}, t("cases.created")), h("dd", {}, formatTime(found.created_at)));
  const members = table("case.members", ["case.member", "case.member_role", "case.added"],
    found.members.map((m) => h("tr", {}, h("td", {}, m.user), h("td", {}, t(`role.${m.role}`)),
      h("td", {}, formatTime(m.added_at)))));
  const captureRows = captures.map((c) => h("tr", {},
    h("td", { class: "id" }, c.id),
    h("td", {}, h("span", { class: `badge capture-${c.state}` }, t(`capture.${c.state}`))),
    h("td", { class: "wrap urls" }, c.urls.map((url) => h("div", {}, url))),
    h("td", {}, c.operator),
    h("td", {}, formatTime(c.created_at))));
  show(
    h("p", {}, h("a", { href: "#/cases" }, `← ${t("case.back")}`)),
    h("h1", { class: "wrap" }, `${t("case.title", { id: found.id })} · ${found.title}`),
    facts,
    h("h2", {}, t("case.members")), members,
    h("h2", {}, t("case.captures")),
    captures.length ? table("case.captures", ["case.capture_id", "case.capture_state", "case.capture_urls",
      "case.capture_operator", "case.capture_created"], captureRows) : h("p", { class: "empty" }, t("case.no_captures")),
  );
}

// -- routing ---------------------------------------------------------------------------------------------------

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const hash = location.hash || "#/cases";
  say("");
  try {
    if (hash !== "#/signin") await whoAmI();
    drawBar();
    if (hash === "#/signin" || !me) {
      if (hash !== "#/signin") return go("#/signin");
      return signInPage();
    }
    const caseMatch = hash.match(/^#\/cases\/([^/]+)$/);
    if (hash === "#/cases") await casesPage();
    else if (caseMatch) await casePage(decodeURIComponent(caseMatch[1]));
    else show(h("h1", {}, t("error.not_found")));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    if (error instanceof ApiError && error.status === 404) show(h("h1", {}, t("error.not_found")));
    else show(h("p", { class: "problem", role: "alert" }, t("error.generic", { detail: error.message })));
  }
}

for (const button of document.querySelectorAll("[data-lang]")) {
  button.addEventListener("click", () => {
    setLanguage(button.dataset.lang);
    route();
  });
}
window.addEventListener("hashchange", route);
setLanguage(language());
route();
