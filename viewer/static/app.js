// The viewer: a few pages over the custody service's HTTP API (/api/v1). Everything from the server is put on the
// page as text (never as HTML), so a case title or a URL can never run as script.

import { API, ApiError, TOKEN, api, field, h, onSignedOut, say, table, urlText } from "/viewer/common.js";
import { behindLine, evidenceView, reportPage } from "/viewer/evidence.js";
import { formatTime, language, setLanguage, t } from "/viewer/i18n.js";
import { verifyPage } from "/viewer/verify.js";

let shownRoute = 0; // bumped by every route(): a page still loading when another was opened must not draw

function current(ticket) {
  return ticket === shownRoute;
}

function main() {
  return document.getElementById("app");
}

// Parts may come as nested lists, with null for what a page leaves out.
function flatParts(content) {
  return content.flat(Infinity).filter((part) => part !== null && part !== undefined && part !== false);
}

function show(...content) {
  main().replaceChildren(...flatParts(content));
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
  document.getElementById("skip").textContent = t("nav.skip");
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const verifyLink = h("a", { href: "#/verify" }, t("nav.verify"));
  if (me) {
    nav.replaceChildren(h("a", { href: "#/cases" }, t("nav.cases")), verifyLink);
    who.replaceChildren(`${me.name} · ${t(`role.${me.role}`)} `,
      h("button", { type: "button", class: "link", onclick: signOut }, t("nav.signout")));
  } else {
    nav.replaceChildren(verifyLink);
    who.replaceChildren(location.hash === "#/signin" ? "" : h("a", { href: "#/signin" }, t("signin.title")));
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

async function casesPage(ticket) {
  const cases = await api("/cases");
  if (!current(ticket)) return;
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

async function casePage(caseId, ticket) {
  const [found, captures] = await Promise.all([
    api(`/cases/${encodeURIComponent(caseId)}`),
    api(`/cases/${encodeURIComponent(caseId)}/captures`),
  ]);
  if (!current(ticket)) return;
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
    h("td", { class: "id" }, h("a", { href: `#/captures/${encodeURIComponent(c.id)}` }, c.id)),
    h("td", {}, h("span", { class: `badge capture-${c.state}` }, t(`capture.${c.state}`))),
    h("td", { class: "wrap urls" }, c.urls.map((url) => urlText(url, "div"))),
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
    found.your_role === "investigator" && found.state !== "closed" ? newCaptureForm(found) : null,
  );
}

function newCaptureForm(found) {
  const urls = h("textarea", { name: "urls", rows: 5, required: true, spellcheck: "false" });
  const duration = h("input", { name: "duration", type: "number", min: 1, step: 1, inputmode: "numeric" });
  const layout = h("select", { name: "layout" }, h("option", { value: "auto" }, t("new.layout_auto")),
    ["1x1", "1x2", "2x2", "2x3", "3x3"].map((value) => h("option", { value }, value)));
  const fps = h("input", { name: "fps", type: "number", min: 1, max: 30, value: 15 });
  const tileSize = h("select", { name: "tile_size" },
    ["640x360", "960x540", "1280x720"].map((value) => h("option", { value }, t(`new.tile_size.${value}`))));
  const officers = found.members.filter((m) => m.role === "investigator" && (!me || m.user !== me.name));
  const second = h("select", { name: "second_officer" }, h("option", { value: "" }, t("new.no_second_officer")),
    officers.map((m) => h("option", { value: m.user }, m.user)));
  const problem = h("p", { class: "problem", role: "alert" });
  return h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const list = urls.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (list.length < 1 || list.length > 9) {
      problem.textContent = t("new.too_many");
      return;
    }
    const body = { urls: list, layout: layout.value, tile_size: tileSize.value, fps: Number(fps.value) || 15 };
    if (duration.value) body.duration = Number(duration.value);
    if (second.value) body.second_officer = second.value;
    try {
      const made = await api(`/cases/${encodeURIComponent(found.id)}/captures`, { method: "POST", json: body });
      go(`#/captures/${encodeURIComponent(made.id)}`);
    } catch (error) {
      problem.textContent = t("error.generic", { detail: error.message });
    }
  } },
  h("h2", {}, t("new.title")),
  field("new.urls", urls),
  field("new.duration", duration),
  field("new.layout", layout),
  field("new.fps", fps),
  field("new.tile_size", tileSize),
  field("new.second_officer", second),
  problem,
  h("button", { type: "submit", class: "primary" }, t("new.launch")));
}

// -- a capture: its state, live while it records ------------------------------------------------------------

const FINAL = new Set(["complete", "partial", "failed", "interrupted"]);
let leaving = []; // what a page started (streams, timers) and must stop when another page is shown

function onLeave(stop) {
  leaving.push(stop);
}

async function readEvents(captureId, onEvent, signal) {
  // Server-Sent Events over fetch: EventSource cannot send the Authorization header, and tokens never go in URLs.
  let lastId = null;
  while (!signal.aborted) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let ended = false;
    let reader = null;
    try {
      const answer = await fetch(`${API}/captures/${encodeURIComponent(captureId)}/events`, { headers, signal });
      if (!answer.ok && answer.status < 500) return; // refused (signed out, no access): nothing to wait for
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { id: null, event: "message", data: null };
          for (const line of block.split("\n")) {
            const [name, ...rest] = line.split(": ");
            if (name === "id") event.id = rest.join(": ");
            else if (name === "event") event.event = rest.join(": ");
            else if (name === "data") event.data = JSON.parse(rest.join(": "));
          }
          if (event.data === null) continue;
          if (event.id) lastId = event.id;
          onEvent(event);
          if (event.event === "end") ended = true;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (reader) reader.cancel().catch(() => {}); // broken off mid-stream: release it before reconnecting
    }
    if (ended) return;
    await new Promise((resolve) => setTimeout(resolve, 2000)); // reconnect where it broke off
  }
}

// The progress stream in the viewer's language: the server's kinds and states are translated; its free-text
// message (in English) stays as the line's tooltip, and a reason (a page's own error) is shown as it came.
function describeEvent(event) {
  const data = event.data || {};
  const state = (value) => t(`capture.${value}`, {}, value);
  switch (data.kind || event.event) {
    case "state":
      return [t("ev.state", { state: state(data.state) }), data.reason || ""].filter(Boolean).join(": ");
    case "progress":
      if (data.phase === undefined) break;
      return t("ev.progress", { phase: t(`phase.${data.phase}`, {}, data.phase),
        seconds: Math.round(data.seconds_recorded ?? 0), segments: data.segments_chained ?? 0 });
    case "step":
      if (!data.step) break;
      return t("ev.step", { step: t(`step.${data.step}`, {}, data.step),
        outcome: data.outcome ? t(`outcome.${data.outcome}`, {}, data.outcome) : t("outcome.started") });
    case "tile":
      if (data.tile && data.cpu_cores != null) {
        return t("ev.tile_lowered", { tile: data.tile, cores: data.cpu_cores.toFixed(2),
          others: (data.others_cores ?? 0).toFixed(2) });
      }
      if (!data.tile || !data.tile_status) break;
      return t("ev.tile", { tile: data.tile, status: t(`tile.${data.tile_status}`, {}, data.tile_status) });
    case "done":
      return t("ev.done", { state: state(data.status || "") });
    case "end":
      return t("ev.end", { state: state(data.state || "") });
    default:
      break;
  }
  return data.message || event.event;
}

async function capturePage(captureId, ticket) {
  const path = `/captures/${encodeURIComponent(captureId)}`;
  let capture = await api(path);
  const found = await api(`/cases/${encodeURIComponent(capture.case_id)}`);
  if (!current(ticket)) return;
  const facts = h("dl", { class: "facts" });
  const live = h("div", { class: "live" });
  const tiles = h("tbody");
  const buttons = h("div", { class: "actions" });
  const log = h("ol", { class: "events", "aria-live": "off" });
  const preview = h("img", { class: "preview", alt: t("cap.preview_alt"), hidden: true });
  const noPreview = h("p", { class: "empty" }, t("cap.no_preview"));
  const controller = new AbortController();
  let previewUrl = null;
  let timer = null;

  const draw = () => {
    const officer = capture.second_officer;
    facts.replaceChildren(...[
      h("dt", {}, t("cap.state")), h("dd", {}, h("span", { class: `badge capture-${capture.state}`, id: "capture-state" },
        t(`capture.${capture.state}`))),
      capture.reason ? [h("dt", {}, t("cap.reason")), h("dd", { class: "wrap" }, capture.reason)] : [],
      h("dt", {}, t("cap.case")), h("dd", { class: "wrap" }, h("a", { href: `#/cases/${encodeURIComponent(found.id)}` },
        `${found.id} · ${found.title}`)),
      h("dt", {}, t("cap.operator")), h("dd", {}, capture.operator),
      h("dt", {}, t("cap.second_officer")), h("dd", { id: "second-officer" }, !officer ? t("cap.no_second_officer")
        : officer.confirmed_at ? t("cap.witness_done", { user: officer.user, at: formatTime(officer.confirmed_at) })
          : t("cap.witness_pending", { user: officer.user })),
      h("dt", {}, t("cap.launched")), h("dd", {}, formatTime(capture.created_at)),
      capture.started_at ? [h("dt", {}, t("cap.started")), h("dd", {}, formatTime(capture.started_at))] : [],
      capture.ended_at ? [h("dt", {}, t("cap.ended")), h("dd", {}, formatTime(capture.ended_at))] : [],
      capture.manifest_sha256 ? [h("dt", {}, t("cap.manifest")), h("dd", { class: "digest" }, capture.manifest_sha256)]
        : []].flat());
    const progress = capture.progress || {};
    live.replaceChildren(
      h("p", { id: "capture-progress" }, [progress.phase ? `${t("cap.phase")}: ${t(`phase.${progress.phase}`, {},
        progress.phase)}` : "",
        t("cap.seconds", { seconds: progress.seconds_recorded ?? 0 }),
        t("cap.segments", { count: progress.segments_chained ?? 0 })].filter(Boolean).join(" · ")),
      behindLine(progress.keeping_up));
    // Once the capture ended, its manifest summary holds each tile's final state; before, the live progress does.
    const summaryTiles = capture.summary && capture.summary.tiles;
    const tileRows = summaryTiles && summaryTiles.length ? summaryTiles
      : progress.tiles && progress.tiles.length ? progress.tiles
        : capture.urls.map((url, index) => ({ tile: index + 1, url, status: "", reason: "" }));
    tiles.replaceChildren(...tileRows.map((tile) => h("tr", {},
      h("td", {}, String(tile.tile)), h("td", { class: "wrap urls" }, urlText(tile.url, "div")),
      h("td", {}, tile.status ? h("span", { class: `badge tile-${tile.status}` }, t(`tile.${tile.status}`, {},
        tile.status)) : "—", tile.reason ? h("div", { class: "wrap muted" }, tile.reason) : null))));
    const active = !FINAL.has(capture.state);
    const parts = [];
    if (active && found.your_role === "investigator") {
      parts.push(h("button", { type: "button", class: "danger", onclick: async () => {
        if (!window.confirm(t("cap.stop_confirm"))) return;
        try {
          capture = await api(`${path}/stop`, { method: "POST" });
          say(t("cap.stop_requested"));
          draw();
        } catch (error) {
          say(t("error.generic", { detail: error.message }));
        }
      } }, t("cap.stop")));
    }
    if (officer && me && officer.user === me.name && !officer.confirmed_at && capture.state !== "queued") {
      parts.push(h("button", { type: "button", class: "primary", onclick: async () => {
        try {
          capture = await api(`${path}/witness`, { method: "POST" });
          say(t("cap.witnessed"));
          draw();
        } catch (error) {
          say(t("error.generic", { detail: error.message }));
        }
      } }, t("cap.witness")));
    }
    buttons.replaceChildren(...parts);
  };

  const refreshPreview = async () => {
    if (capture.state !== "recording") return;
    const answer = await fetch(`${API}${path}/preview.jpg`, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` }, signal: controller.signal,
    }).catch(() => null);
    if (!answer || !answer.ok) return;
    const image = await answer.blob().catch(() => null);
    if (!image || controller.signal.aborted) return;
    const url = URL.createObjectURL(image);
    preview.src = url;
    preview.hidden = false;
    noPreview.hidden = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = url;
  };

  let refetching = false;
  let again = false;
  let afterRefetch = () => {};
  const refetch = async () => {
    if (refetching) {
      again = true; // asked while a read is under way: read once more after it, so the last state is shown
      return;
    }
    refetching = true;
    try {
      do {
        again = false;
        capture = await api(path);
        if (controller.signal.aborted) return;
        draw();
        afterRefetch();
      } while (again);
    } catch {
      // the next event or tick reads again
    } finally {
      refetching = false;
    }
  };

  draw();
  // A live view only while recording: once the capture ends, the player of the kept evidence replaces it.
  const previewSection = FINAL.has(capture.state) ? null
    : h("section", { "aria-labelledby": "preview-title" }, h("h2", { id: "preview-title" }, t("cap.preview")),
      preview, noPreview);
  show(
    h("p", {}, h("a", { href: `#/cases/${encodeURIComponent(found.id)}` }, `← ${t("cap.back")}`)),
    h("h1", {}, t("cap.title", { id: capture.id })),
    facts, buttons,
    previewSection,
    live,
    h("h2", {}, t("cap.tiles")),
    h("table", {}, h("thead", {}, h("tr", {}, ["cap.tile", "cap.tile_url", "cap.tile_state"].map((key) =>
      h("th", { scope: "col" }, t(key))))), tiles),
    FINAL.has(capture.state) ? null : [h("h2", {}, t("cap.events")), log],
  );
  const evidence = h("div", { class: "evidence" });
  main().append(evidence);
  const showEvidence = async () => {
    if (!capture.manifest_sha256 || evidence.dataset.shown) return;
    evidence.dataset.shown = "yes";
    try {
      const shown = await evidenceView(capture, found, onLeave);
      if (current(ticket)) evidence.replaceChildren(...flatParts(shown));
    } catch (error) {
      if (current(ticket)) evidence.replaceChildren(h("p", { class: "problem", role: "alert" },
        t("error.generic", { detail: error.message })));
    }
  };
  if (FINAL.has(capture.state)) {
    await showEvidence();
    return;
  }
  if (!current(ticket)) return;
  timer = setInterval(() => { refreshPreview(); refetch(); }, 3000);
  refreshPreview();
  onLeave(() => {
    controller.abort();
    clearInterval(timer);
    if (previewUrl) URL.revokeObjectURL(previewUrl);
  });
  readEvents(capture.id, (event) => {
    log.prepend(h("li", { title: event.data.message || "" }, [event.data.at ? formatTime(event.data.at) : "",
      describeEvent(event)].filter(Boolean).join(" — ")));
    while (log.children.length > 50) log.lastChild.remove();
    refetch();
    if (event.event === "end") clearInterval(timer);
  }, controller.signal);
  afterRefetch = () => {
    if (!FINAL.has(capture.state)) return;
    if (previewSection) previewSection.remove();
    showEvidence();
  };
}

async function showReport(captureId, ticket) {
  const capture = await api(`/captures/${encodeURIComponent(captureId)}`);
  const found = await api(`/cases/${encodeURIComponent(capture.case_id)}`);
  const page = await reportPage(captureId, found);
  if (current(ticket)) show(...page);
}

// -- routing ---------------------------------------------------------------------------------------------------

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const hash = location.hash || "#/cases";
  const ticket = ++shownRoute;
  for (const stop of leaving) stop();
  leaving = [];
  say("");
  try {
    if (hash !== "#/signin") await whoAmI();
    drawBar();
    // The check for courts needs no sign-in: a QR code on a printed report opens it.
    const verifyMatch = hash.match(/^#\/verify(?:\?(.*))?$/);
    if (verifyMatch) {
      show(...verifyPage(new URLSearchParams(verifyMatch[1] || "")));
      return;
    }
    if (hash === "#/signin" || !me) {
      if (hash !== "#/signin") return go("#/signin");
      return signInPage();
    }
    const caseMatch = hash.match(/^#\/cases\/([^/]+)$/);
    const captureMatch = hash.match(/^#\/captures\/([^/]+)$/);
    const reportMatch = hash.match(/^#\/captures\/([^/]+)\/report$/);
    if (hash === "#/cases") await casesPage(ticket);
    else if (caseMatch) await casePage(decodeURIComponent(caseMatch[1]), ticket);
    else if (captureMatch) await capturePage(decodeURIComponent(captureMatch[1]), ticket);
    else if (reportMatch) await showReport(decodeURIComponent(reportMatch[1]), ticket);
    else show(h("h1", {}, t("error.not_found")));
  } catch (error) {
    if (!current(ticket) || (error instanceof ApiError && error.status === 401)) return;
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
onSignedOut(() => {
  me = null;
  if (location.hash.startsWith("#/verify")) drawBar(); // the check for courts goes on without a sign-in
  else go("#/signin");
});
document.getElementById("skip").addEventListener("click", () => main().focus());
// A link followed from the keyboard leaves the focus on a link that is gone: the new page takes it, so the next
// Tab starts at its top (and a screen reader reads it). The sign-in page puts it in the name field itself.
window.addEventListener("hashchange", async () => {
  await route();
  if (!main().contains(document.activeElement)) main().focus({ preventScroll: true });
});
setLanguage(language());
route();
