// A preserved capture as a case handler or a court reads it: the synchronized player (the composite, or one
// tile's own recording and sound at the same moment), a timeline of what happened, each tile's page facts, the
// manifest with both digests, the timestamp tokens, the environment, the playback quality and the custody record.

import {
  API, api, copyText, formatBytes, formatSeconds, h, readFile, readableUrl, say, table, urlText,
} from "/viewer/common.js";
import { formatTime, language, t } from "/viewer/i18n.js";

const encodePath = (path) => path.split("/").map(encodeURIComponent).join("/");

// Media tickets: a <video>, an <img> or a download link cannot send the Authorization header, so their URLs
// carry a ticket for this one capture, asked for again before it lapses.
class Tickets {
  constructor(captureId) {
    this.captureId = captureId;
    this.ticket = null;
    this.expires = 0;
  }

  async fresh() {
    if (!this.ticket || this.expires - Date.now() < 10 * 60 * 1000) {
      const answer = await api(`/captures/${encodeURIComponent(this.captureId)}/media-ticket`, { method: "POST" });
      this.ticket = answer.ticket;
      this.expires = new Date(answer.expires_at).getTime();
    }
    return this;
  }

  url(path) {
    return `${API}/captures/${encodeURIComponent(this.captureId)}/artifacts/${encodePath(path)}` +
      `?ticket=${encodeURIComponent(this.ticket)}`;
  }

  special(what) {
    return `${API}/captures/${encodeURIComponent(this.captureId)}/${what}?ticket=${encodeURIComponent(this.ticket)}`;
  }
}

function jsonLines(text) {
  const rows = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      rows.push(JSON.parse(line));
    } catch {
      // a line cut off by an interrupted capture: the rest still reads
    }
  }
  return rows;
}

async function optional(promise) {
  try {
    return await promise;
  } catch {
    return null;
  }
}

// -- the marks on the timeline -----------------------------------------------------------------------------------

const PAGE_EVENTS = {
  navigate: "page", navigated: "page", load: "page", domcontentloaded: "page", "browser-started": "page",
  snapshot: "page", media: "media", "stream-copy-started": "media", "stream-copy-ended": "media",
  "request-failed": "error", "request-refused": "error", "page-error": "error", crashed: "error",
  "load-failed": "error", "renderer-unresponsive": "error",
};
export const MARK_KINDS = ["page", "media", "error", "segment", "timestamp", "custody"];

function pageMark(event) {
  const kind = PAGE_EVENTS[event.event] || (/(fail|error|crash|refus)/.test(event.event) ? "error" : "page");
  const what = event.url || event.target || event.file || event.label || "";
  if (String(what).startsWith("data:")) return null; // the blank page a tile's browser opens before navigating
  return { kind, tile: event.tile, at: Date.parse(event.t) / 1000, label: t(`event.${event.event}`, {}, event.event),
    detail: [what, event.error || event.reason || event.status || ""].filter(Boolean).join(" · ") };
}

function collectMarks({ pageEvents, chain, manifest, record, custody }) {
  const marks = [];
  for (const event of pageEvents) {
    const mark = pageMark(event);
    if (mark && Number.isFinite(mark.at)) marks.push(mark);
  }
  const chainAt = new Map();
  for (const link of chain) {
    chainAt.set(link.n, link.at);
    if (String(link.file).startsWith("segments/video_")) {
      marks.push({ kind: "segment", at: link.at, label: t("mark.segment"), detail: `${link.file} · #${link.n}` });
    }
  }
  for (const artifact of manifest.artifacts) { // chain-head tokens granted while recording
    const stamped = artifact.path.match(/^timestamps\/chain-(\d+)\.\d+\.tsr$/);
    if (stamped && chainAt.has(Number(stamped[1]))) {
      marks.push({ kind: "timestamp", at: chainAt.get(Number(stamped[1])), label: t("mark.chain_token"),
        detail: artifact.path });
    }
  }
  for (const token of [...(record?.timestamps || []), ...(record?.chain_timestamps || [])]) {
    if (token.gen_time) {
      marks.push({ kind: "timestamp", at: Date.parse(token.gen_time) / 1000, label: t("mark.token"),
        detail: `${token.tsa_name || token.tsa_url} · ${t(token.local_tsa ? "ts.local" : "ts.third_party")}` });
    }
  }
  for (const entry of custody) {
    marks.push({ kind: "custody", at: Date.parse(entry.at) / 1000, label: t(`action.${entry.action}`, {}, entry.action),
      detail: `#${entry.seq} · ${entry.actor}` });
  }
  return marks.sort((a, b) => a.at - b.at);
}

// -- the player --------------------------------------------------------------------------------------------------

function player({ manifest, tickets, marks, t0, onLeave }) {
  const layout = manifest.layout;
  const composite = manifest.artifacts.find((a) => a.role === "composite");
  const tileVideos = new Map(manifest.artifacts.filter((a) => a.role === "tile-video").map((a) => [a.tile, a]));
  const video = h("video", { preload: "metadata", playsinline: true, "aria-label": t("play.video_label") });
  video.muted = true;
  const overlay = h("div", { class: "grid-overlay" });
  const stage = h("div", { class: "stage" }, video, overlay);
  stage.style.maxWidth = `min(100%, calc(70vh * ${layout.width / layout.height}))`; // the whole grid on one screen
  const showing = h("p", { class: "showing", id: "player-showing", "aria-live": "polite" });
  const back = h("button", { type: "button", class: "secondary", hidden: true }, t("play.back"));
  const playButton = h("button", { type: "button", class: "primary", "aria-label": t("play.play") }, t("play.play"));
  const clock = h("span", { class: "clock", id: "player-clock" }, "00:00");
  const wall = h("span", { class: "wall-clock" });
  const seek = h("input", { type: "range", min: 0, max: 1000, value: 0, step: 1, "aria-label": t("play.seek") });
  const lanes = h("div", { class: "timeline", role: "group", "aria-label": t("timeline.title") });
  const head = h("div", { class: "playhead", "aria-hidden": "true" });
  let duration = manifest.recorded_seconds || 0;
  let tileShown = null; // null: the composite

  const secondsOf = (epoch) => Math.min(Math.max(epoch - t0, 0), duration);

  const drawShowing = () => {
    if (tileShown === null) {
      showing.textContent = t("play.composite");
    } else {
      const tile = layout.tiles.find((x) => x.tile === tileShown);
      showing.textContent = t("play.tile", { tile: tileShown, url: tile ? readableUrl(tile.url) : "" });
    }
    back.hidden = tileShown === null;
    overlay.hidden = tileShown !== null;
  };

  // Both files share the composite's clock (each tile is cut from it, its audio on the same time base), so
  // switching keeps currentTime and the same moment plays on.
  // Where a file still loading is to start: a second switch, a seek or a mark clicked before its metadata came
  // must go on from there, not from the 0 a loading element reports.
  let pending = null;
  const position = () => (pending ? pending.at : video.currentTime);
  const setPosition = (seconds) => {
    if (pending) pending.at = seconds;
    else video.currentTime = seconds;
  };
  const load = (artifact, { muted, at, playing }) => {
    video.muted = muted;
    pending = { at, playing };
    video.src = tickets.url(artifact.path);
    video.dataset.path = artifact.path;
  };

  const switchTo = (tile) => {
    const artifact = tile === null ? composite : tileVideos.get(tile);
    if (!artifact) return;
    const at = position();
    const playing = pending ? pending.playing : !video.paused;
    const left = tileShown;
    // The button pressed is hidden by the switch: the focus goes to its counterpart, not to the page's start.
    const focused = overlay.contains(document.activeElement) || document.activeElement === back;
    tileShown = tile;
    load(artifact, { muted: tile === null, at, playing });
    drawShowing();
    if (focused) (tile === null ? overlay.querySelector(`[data-tile="${left}"]`) || back : back).focus();
  };

  for (const tile of layout.tiles) {
    const rect = tile.rect;
    const button = h("button", { type: "button", class: "tile-hit", "data-tile": tile.tile,
      "aria-label": t("play.open_tile", { tile: tile.tile, url: readableUrl(tile.url) }), title: tile.url,
      disabled: !tileVideos.has(tile.tile), onclick: () => switchTo(tile.tile) },
    h("span", { class: "tile-number" }, String(tile.tile)));
    button.style.left = `${(100 * rect.x) / layout.width}%`;
    button.style.top = `${(100 * rect.y) / layout.height}%`;
    button.style.width = `${(100 * rect.width) / layout.width}%`;
    button.style.height = `${(100 * rect.height) / layout.height}%`;
    overlay.append(button);
  }
  back.addEventListener("click", () => switchTo(null));
  playButton.addEventListener("click", () => (video.paused ? video.play().catch(() => {}) : video.pause()));
  const drawPlaying = () => {
    const key = video.paused ? "play.play" : "play.pause";
    playButton.textContent = t(key);
    playButton.setAttribute("aria-label", t(key));
  };
  video.addEventListener("play", drawPlaying);
  video.addEventListener("pause", drawPlaying);
  video.addEventListener("loadedmetadata", () => {
    if (Number.isFinite(video.duration) && video.duration > 0) duration = video.duration;
    if (!pending) return;
    const { at, playing } = pending;
    pending = null;
    video.currentTime = Math.min(at, video.duration || at);
    if (playing) video.play().catch(() => {});
  });
  const drawTime = () => {
    const now = position();
    clock.textContent = `${formatSeconds(now)} / ${formatSeconds(duration)}`;
    seek.value = String(duration ? Math.round((1000 * now) / duration) : 0);
    head.style.left = `${duration ? (100 * now) / duration : 0}%`;
    wall.textContent = t("play.wall", { time: formatTime(new Date((t0 + now) * 1000).toISOString()) });
  };
  video.addEventListener("timeupdate", drawTime);
  seek.addEventListener("input", () => {
    setPosition((Number(seek.value) / 1000) * duration);
  });
  // A ticket that lapsed during a long session: ask for a new one and go on where the player stood; a file
  // that fails again right away is said to have failed, not asked for in a loop.
  let retriedAt = 0;
  video.addEventListener("error", async () => {
    const at = position();
    if (Date.now() - retriedAt < 30_000) {
      say(t("play.failed"));
      return;
    }
    retriedAt = Date.now();
    try {
      tickets.expires = 0;
      await tickets.fresh();
      load(tileShown === null ? composite : tileVideos.get(tileShown), { muted: video.muted, at, playing: false });
    } catch {
      say(t("play.failed"));
    }
  });

  const seekTo = (seconds) => {
    setPosition(Math.min(Math.max(seconds, 0), duration));
    drawTime();
  };
  for (const [lane, kind] of MARK_KINDS.entries()) {
    for (const mark of marks.filter((m) => m.kind === kind)) {
      const seconds = secondsOf(mark.at);
      // Marks are for the mouse; the table below the player holds the same marks for the keyboard.
      const dot = h("button", { type: "button", tabindex: "-1", class: `mark kind-${kind}`, "aria-hidden": "true",
        title: `${formatSeconds(seconds)} ${mark.label}${mark.tile ? ` #${mark.tile}` : ""} ${mark.detail || ""}`,
        onclick: () => seekTo(seconds) });
      dot.style.left = `${duration ? (100 * seconds) / duration : 0}%`;
      dot.style.top = `${lane * 12 + 4}px`;
      lanes.append(dot);
    }
  }
  lanes.append(head);
  const legend = h("ul", { class: "legend" }, MARK_KINDS.map((kind) =>
    h("li", {}, h("span", { class: `swatch kind-${kind}`, "aria-hidden": "true" }), t(`mark.kind.${kind}`))));

  load(composite, { muted: true, at: 0, playing: false });
  drawShowing();
  drawTime();
  onLeave(() => {
    video.pause();
    video.removeAttribute("src");
    video.load();
  });
  return {
    seekTo,
    element: h("section", { class: "player", "aria-labelledby": "player-title" },
      h("h2", { id: "player-title" }, t("play.title")),
      h("p", { class: "hint" }, t("play.hint")),
      stage,
      h("div", { class: "controls" }, playButton, clock, seek, back),
      showing, wall,
      lanes, legend),
  };
}

// -- the sections under the player -------------------------------------------------------------------------------

function markTable(marks, t0, duration, seekTo) {
  const rows = marks.map((mark) => {
    const seconds = Math.min(Math.max(mark.at - t0, 0), duration);
    const outside = mark.at - t0 > duration + 1 ? t("mark.after_end") : mark.at < t0 ? t("mark.before_start") : "";
    return h("tr", { class: `row-${mark.kind}` },
      h("td", {}, h("button", { type: "button", class: "link", onclick: () => seekTo(seconds),
        "aria-label": t("mark.seek_to", { time: formatSeconds(seconds) }) }, formatSeconds(seconds))),
      h("td", {}, formatTime(new Date(mark.at * 1000).toISOString()), outside ? h("div", { class: "muted" }, outside) : null),
      h("td", {}, t(`mark.kind.${mark.kind}`)),
      h("td", {}, mark.tile ? String(mark.tile) : "—"),
      h("td", {}, mark.label),
      h("td", { class: "wrap" }, mark.detail || ""));
  });
  const filter = h("select", { id: "mark-filter", "aria-label": t("mark.filter") },
    h("option", { value: "" }, t("mark.all")), MARK_KINDS.map((kind) => h("option", { value: kind }, t(`mark.kind.${kind}`))));
  const body = table("mark.table", ["mark.time", "mark.wall", "mark.kind", "mark.tile", "mark.what", "mark.detail"],
    rows);
  filter.addEventListener("change", () => {
    for (const row of body.querySelectorAll("tbody tr")) {
      row.hidden = Boolean(filter.value) && !row.classList.contains(`row-${filter.value}`);
    }
  });
  return h("details", { class: "marks" }, h("summary", {}, t("mark.list", { count: marks.length })), filter, body);
}

function screenshots(manifest, tickets) {
  const cards = [];
  for (const tile of manifest.layout.tiles) {
    for (const moment of ["start", "end"]) {
      const artifact = manifest.artifacts.find((a) => a.path === `tiles/${tile.tile}/screenshot-${moment}.png`);
      if (!artifact) continue;
      cards.push(h("figure", { class: "shot" },
        h("a", { href: tickets.url(artifact.path), target: "_blank", rel: "noopener" },
          h("img", { src: tickets.url(artifact.path), loading: "lazy",
            alt: t("shots.alt", { tile: tile.tile, moment: t(`shots.${moment}`) }) })),
        h("figcaption", {}, t("shots.caption", { tile: tile.tile, moment: t(`shots.${moment}`) }))));
    }
  }
  return cards.length ? h("div", { class: "shots" }, cards) : h("p", { class: "empty" }, t("shots.none"));
}

function certificateText(details) {
  if (!details) return t("tiles.no_tls");
  const from = details.validFrom ? new Date(details.validFrom * 1000).toISOString().slice(0, 10) : "";
  const to = details.validTo ? new Date(details.validTo * 1000).toISOString().slice(0, 10) : "";
  return [
    h("div", {}, `${t("tiles.subject")}: ${details.subjectName || "—"}`),
    h("div", {}, `${t("tiles.issuer")}: ${details.issuer || "—"}`),
    h("div", {}, `${details.protocol || ""} ${from && to ? `${from} – ${to}` : ""}`.trim()),
  ];
}

function tileFacts(manifest, pages) {
  const rows = manifest.tiles.map((tile) => {
    const page = pages.get(tile.tile) || {};
    const redirects = tile.redirect_chain || [];
    return h("tr", {},
      h("td", {}, String(tile.tile)),
      h("td", {}, h("span", { class: `badge tile-${tile.status}` }, t(`tile.${tile.status}`, {}, tile.status)),
        tile.reason ? h("div", { class: "wrap muted" }, tile.reason) : null),
      h("td", { class: "wrap urls" }, urlText(tile.url, "div"),
        tile.final_url && tile.final_url !== tile.url ? h("div", {}, "→ ", urlText(tile.final_url)) : null,
        redirects.length > 1 ? h("div", { class: "muted" }, t("tiles.redirects", { count: redirects.length - 1 }),
          redirects.slice(1, -1).map((hop) => h("div", {}, "↳ ", urlText(hop)))) : null),
      h("td", { class: "wrap" }, tile.title || "—"),
      h("td", {}, tile.http_status ? String(tile.http_status) : "—", h("div", {}, tile.remote_ip || "")),
      h("td", { class: "wrap" }, certificateText(page.security_details)));
  });
  return table("tiles.title", ["cap.tile", "cap.tile_state", "tiles.urls", "tiles.page_title", "tiles.status_ip",
    "tiles.tls"], rows);
}

function digestCell(value, label) {
  return h("td", { class: "digest-cell" }, h("code", { class: "digest" }, value),
    h("button", { type: "button", class: "copy", "aria-label": t("manifest.copy", { what: label }),
      onclick: async () => say(t(await copyText(value) ? "manifest.copied" : "manifest.copy_failed", { what: label })) },
    t("manifest.copy_short")));
}

function manifestTable(manifest, tickets) {
  const search = h("input", { type: "search", id: "artifact-search", "aria-label": t("manifest.search"),
    placeholder: t("manifest.search") });
  const rows = manifest.artifacts.map((artifact) => h("tr", { "data-path": artifact.path },
    h("td", { class: "wrap" }, h("a", { href: tickets.url(artifact.path), download: artifact.path.split("/").pop() },
      artifact.path)),
    h("td", {}, t(`artifact.${artifact.role}`, {}, artifact.role), artifact.tile ? ` #${artifact.tile}` : ""),
    h("td", { class: "number" }, formatBytes(artifact.size)),
    digestCell(artifact.digests.sha256, `SHA-256 ${artifact.path}`),
    digestCell(artifact.digests.sm3, `SM3 ${artifact.path}`)));
  const body = table("manifest.title", ["manifest.path", "manifest.role", "manifest.size", "manifest.sha256",
    "manifest.sm3"], rows);
  body.classList.add("manifest");
  search.addEventListener("input", () => {
    const words = search.value.trim().toLowerCase();
    for (const row of body.querySelectorAll("tbody tr")) {
      row.hidden = Boolean(words) && !row.textContent.toLowerCase().includes(words);
    }
  });
  return [search, h("div", { class: "scroll" }, body)];
}

function timestampTable(record, tickets) {
  if (!record) return h("p", { class: "empty" }, t("ts.none"));
  const tokens = [...record.timestamps.map((x) => ["ts.over_manifest", x]),
    ...record.chain_timestamps.map((x) => ["ts.over_chain", x])];
  if (!tokens.length) return h("p", { class: "empty" }, t("ts.none"));
  return table("ts.title", ["ts.what", "ts.tsa", "ts.time", "ts.serial", "ts.kind", "ts.token"],
    tokens.map(([what, token]) => h("tr", {},
      h("td", {}, t(what)),
      h("td", { class: "wrap" }, token.tsa_name || token.tsa_url),
      h("td", {}, token.gen_time ? formatTime(token.gen_time) : t("ts.pending")),
      h("td", { class: "digest" }, token.serial_number != null ? String(token.serial_number) : "—"),
      h("td", {}, h("span", { class: token.local_tsa ? "badge local" : "badge" },
        t(token.local_tsa ? "ts.local" : "ts.third_party"))),
      h("td", {}, token.response_path ? h("a", { href: tickets.url(token.response_path),
        download: token.response_path.split("/").pop() }, token.response_path.split("/").pop()) : "—"))));
}

function provenanceFacts(provenance) {
  const clock = provenance.clock || {};
  const rows = [
    ["prov.tool", `${provenance.tool} ${provenance.tool_version}${provenance.git_commit ? ` (${provenance.git_commit.slice(0, 12)})` : ""}`],
    ["prov.operator", provenance.operator],
    ["prov.host", `${provenance.hostname} · ${(provenance.ip_addresses || []).join(", ")}`],
    ["prov.os", `${provenance.os} · ${provenance.kernel}`],
    ["prov.timezone", provenance.timezone],
    ["prov.clock", clock.offset_seconds != null
      ? t("prov.clock_offset", { server: clock.server, offset: (clock.offset_seconds * 1000).toFixed(1) })
      : t("prov.clock_unknown", { server: clock.server || "—", error: clock.error || "" })],
    ["prov.components", Object.entries(provenance.components || {}).map(([name, version]) =>
      h("div", {}, `${name}: ${version}`))],
    ["prov.user_agent", provenance.user_agent || "—"],
    ["prov.profile", provenance.browser_profile],
    ["prov.network", provenance.options?.network?.egress || "—"],
    ["prov.dns", Object.entries(provenance.dns || {}).map(([host, addresses]) =>
      h("div", {}, `${host} → ${addresses.join(", ")}`))],
    ["prov.flags", h("details", {}, h("summary", {}, t("prov.flags_count", { count: (provenance.launch_flags || []).length })),
      h("code", { class: "wrap" }, (provenance.launch_flags || []).join(" ")))],
  ];
  return h("dl", { class: "facts" }, rows.flatMap(([key, value]) =>
    [h("dt", {}, t(key)), h("dd", { class: "wrap" }, value ?? "—")]));
}

// The recording machine says while it records when it cannot keep up (all cores busy, a tile dropping frames).
export function behindLine(keepingUp) {
  if (!keepingUp) return null;
  const parts = [];
  if (keepingUp.cpu_saturated_seconds) parts.push(t("cap.behind_cpu", { seconds: keepingUp.cpu_saturated_seconds }));
  for (const [tile, share] of Object.entries(keepingUp.dropping || {})) {
    parts.push(t("cap.behind_tile", { tile, share: Math.round(share * 100) }));
  }
  if (!parts.length) return null;
  for (const tile of keepingUp.lowered || []) parts.push(t("cap.behind_lowered", { tile }));
  const what = parts.join(language() === "zh" ? "；" : "; ");
  return h("p", { class: "warning", id: "capture-behind" }, t("cap.behind", { what }));
}

function spanText(span) {
  // A late composite frame is measured in ms, a browser's drops as a share.
  const figure = (value, digits) => (span.cause === "composite-late" ? `${Math.round(value)} ms`
    : `${(value * 100).toFixed(digits)} %`);
  const worst = figure(span.worst, 1);
  const bound = figure(span.bound, 0);
  const at = (seconds) => `${formatSeconds(Math.floor(seconds))}.${Math.floor((seconds % 1) * 10)}`;
  return t("quality.span", { from: at(span.start_seconds), to: at(span.end_seconds),
    cause: t(`quality.cause.${span.cause}`), worst, bound });
}

// The two remarks the capture makes itself are said in the viewer's language; any other as the manifest has it.
function remarkOf(verdict) {
  if (verdict.verdict === "not-measured" && verdict.remark === "the tile did not record") {
    return h("div", { class: "muted" }, t("quality.not_recorded"));
  }
  if (verdict.remark.startsWith("no video on the page")) {
    return h("div", { class: "muted" }, t("quality.no_video"));
  }
  return verdict.remark ? h("div", { class: "muted" }, verdict.remark) : null;
}

// A tile that cost far more than the others on a saturated machine was held back so the others kept their rate.
function loweredOf(verdict) {
  const at = verdict.priority_lowered_at_seconds;
  if (at == null) return null;
  return h("div", { class: "warning" }, t("quality.lowered", { at: formatSeconds(Math.floor(at)) }));
}

// The capture's own measure of its synchronization (signed with the manifest); older manifests have none, and
// then only the browser's counters at the end are shown.
function quality(manifest) {
  const sync = manifest.sync;
  const judged = new Map(((sync && sync.tiles) || []).map((tile) => [tile.tile, tile]));
  const rows = manifest.tiles.map((tile) => {
    const metrics = tile.metrics || {};
    const verdict = judged.get(tile.tile);
    const decoded = verdict ? verdict.video_frames_decoded : metrics.video_frames_total;
    const dropped = verdict ? verdict.dropped_share : metrics.video_dropped_share;
    return h("tr", {},
      h("td", {}, String(tile.tile)),
      h("td", {}, verdict ? h("span", { class: `badge sync-${verdict.verdict}` }, t(`quality.verdict.${verdict.verdict}`))
        : t("quality.no_verdict")),
      h("td", { class: "number" }, decoded != null ? String(decoded) : "—"),
      h("td", { class: "number" }, dropped != null ? `${(dropped * 100).toFixed(2)} %` : "—"),
      h("td", { class: "number" }, verdict && verdict.cpu_cores_mean != null && verdict.cpu_cores_peak != null
        ? t("quality.cpu_cores", { mean: verdict.cpu_cores_mean.toFixed(2), peak: verdict.cpu_cores_peak.toFixed(2) })
        : "—"),
      h("td", { class: "wrap" }, ...(verdict ? [...verdict.spans.map((span) => h("div", {}, spanText(span))),
        loweredOf(verdict), remarkOf(verdict)] : ["—"])));
  });
  const parts = [];
  if (sync && sync.composite) {
    const c = sync.composite;
    parts.push(h("p", { id: "composite-timing" }, t("quality.composite", { fps: c.fps, frames: c.frames,
      p50: c.interval_p50_ms, p95: c.interval_p95_ms, max: c.interval_max_ms, at: formatSeconds(c.longest_gap_at_seconds),
      late: c.late_frames })));
  }
  if (sync && sync.machine) {
    const m = sync.machine;
    parts.push(h("p", {}, t("quality.machine", { cores: m.cores, mean: Math.round(m.busy_mean * 100),
      p95: Math.round(m.busy_p95 * 100), saturated: m.saturated_seconds })));
  }
  parts.push(table("quality.title", ["cap.tile", "quality.verdict", "quality.frames", "quality.dropped",
    "quality.cpu", "quality.spans"], rows));
  if (sync) parts.push(h("details", {}, h("summary", {}, t("quality.method")), h("p", { class: "wrap" }, sync.method)));
  return parts;
}

function custodyTable(custody) {
  return table("custody.title", ["custody.seq", "custody.at", "custody.actor", "custody.action", "custody.details"],
    custody.map((entry) => h("tr", {},
      h("td", {}, String(entry.seq)),
      h("td", {}, formatTime(entry.at)),
      h("td", { class: "wrap" }, entry.actor),
      h("td", {}, t(`action.${entry.action}`, {}, entry.action)),
      // The record's own fields, shown as stored (not translated: a translation would not be the record).
      h("td", { class: "wrap details" }, Object.entries(entry.details || {}).slice(0, 6).map(([key, value]) =>
        h("div", {}, h("code", {}, `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`)))))));
}

function downloads(capture, manifest, tickets, mayExport) {
  const link = (href, label, name) => h("li", {}, h("a", { href, download: name }, label));
  const composite = manifest.artifacts.find((a) => a.role === "composite");
  return h("ul", { class: "downloads" },
    mayExport ? link(tickets.special("export"), t("dl.package"), `${capture.id}.zip`) : null,
    link(tickets.special("manifest"), t("dl.manifest"), "manifest.json"),
    link(tickets.url("manifest.p7s"), t("dl.signature"), "manifest.p7s"),
    composite ? link(tickets.url(composite.path), t("dl.composite"), "composite.mp4") : null,
    h("li", {}, h("a", { href: `#/captures/${encodeURIComponent(capture.id)}/report` }, t("dl.report"))));
}

// -- the whole evidence view -----------------------------------------------------------------------------------

export async function evidenceView(capture, found, onLeave) {
  const base = `/captures/${encodeURIComponent(capture.id)}`;
  const tickets = await new Tickets(capture.id).fresh();
  const [manifest, record, custody] = await Promise.all([
    api(`${base}/manifest`), optional(api(`${base}/preservation`)), api(`${base}/custody`)]);
  const has = new Set(manifest.artifacts.map((a) => a.path));
  const text = (path) => (has.has(path) ? optional(readFile(`${base}/artifacts/${encodePath(path)}`)
    .then((answer) => answer.text())) : Promise.resolve(null));
  const tiles = manifest.layout.tiles.map((tile) => tile.tile);
  const [framesHead, chainText, ...perTile] = await Promise.all([
    has.has("frames.csv") ? optional(readFile(`${base}/artifacts/frames.csv`, { range: "bytes=0-511" })
      .then((answer) => answer.text())) : null,
    text("chain.jsonl"),
    ...tiles.map((tile) => text(`tiles/${tile}/timeline.jsonl`)),
    ...tiles.map((tile) => text(`tiles/${tile}/page.json`)),
  ]);
  // The composite's clock: the wall-clock time of its first frame (frames.csv), else the capture's start.
  let t0 = Date.parse(manifest.started_at) / 1000;
  const firstFrame = framesHead && framesHead.split("\n")[1];
  if (firstFrame && Number.isFinite(Number(firstFrame.split(",")[3]))) t0 = Number(firstFrame.split(",")[3]);
  const pageEvents = perTile.slice(0, tiles.length).flatMap((body) => (body ? jsonLines(body) : []));
  const pages = new Map();
  perTile.slice(tiles.length).forEach((body, index) => {
    try {
      if (body) pages.set(tiles[index], JSON.parse(body));
    } catch {
      // an unreadable page.json: the manifest's own tile facts still show
    }
  });
  const marks = collectMarks({ pageEvents, chain: chainText ? jsonLines(chainText) : [], manifest, record, custody });
  const hasComposite = manifest.artifacts.some((a) => a.role === "composite");
  const shown = hasComposite ? player({ manifest, tickets, marks, t0, onLeave }) : null;
  const duration = manifest.recorded_seconds || 0;
  const mayExport = ["investigator", "case_handler", "court"].includes(found.your_role);
  return [
    shown ? shown.element : h("p", { class: "empty" }, t("play.none")),
    shown ? markTable(marks, t0, duration, shown.seekTo) : null,
    h("h2", {}, t("dl.title")), downloads(capture, manifest, tickets, mayExport),
    h("h2", {}, t("shots.title")), screenshots(manifest, tickets),
    h("h2", {}, t("tiles.title")), h("div", { class: "scroll" }, tileFacts(manifest, pages)),
    h("h2", {}, t("quality.title")), quality(manifest),
    h("h2", {}, t("ts.title")), timestampTable(record, tickets),
    h("h2", {}, t("manifest.title", { count: manifest.artifacts.length })), manifestTable(manifest, tickets),
    h("h2", {}, t("prov.title")), provenanceFacts(manifest.provenance),
    h("h2", {}, t("custody.title")), h("div", { class: "scroll tall", tabindex: "0", role: "region",
      "aria-label": t("custody.title") }, custodyTable(custody)),
  ];
}

// -- the evidence report ----------------------------------------------------------------------------------------

export async function reportPage(captureId, found) {
  const base = `/captures/${encodeURIComponent(captureId)}`;
  const tickets = await new Tickets(captureId).fresh();
  const made = await api(`${base}/reports`);
  const pageUrl = `${API}${base}/report.html?ticket=${encodeURIComponent(tickets.ticket)}`;
  const frame = h("iframe", { src: pageUrl, title: t("report.preview"), class: "report-frame" });
  const list = h("div", { id: "reports" });
  const drawList = () => {
    list.replaceChildren(made.length ? table("report.made", ["report.at", "manifest.size", "manifest.sha256",
      "manifest.sm3", "report.file"], made.map((report) => h("tr", {},
      h("td", {}, formatTime(report.generated_at)),
      h("td", { class: "number" }, formatBytes(report.size)),
      digestCell(report.sha256, `SHA-256 ${report.path}`),
      digestCell(report.sm3, `SM3 ${report.path}`),
      h("td", { class: "nowrap" },
        h("div", {}, h("a", { href: tickets.url(report.path), download: report.path.split("/").pop() },
          t("report.download"))),
        h("div", {}, h("a", { href: `#/verify?sha256=${report.sha256}` }, t("report.check"))))))) :
      h("p", { class: "empty" }, t("report.none")));
  };
  drawList();
  const problem = h("p", { class: "problem", role: "alert" });
  const mayMake = found.your_role === "investigator" || found.your_role === "case_handler";
  const makeButton = mayMake ? h("button", { type: "button", class: "primary", onclick: async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    problem.textContent = "";
    say(t("report.making"));
    try {
      const report = await api(`${base}/report`, { method: "POST" });
      made.push(report);
      drawList();
      say(t("report.made_ok", { sha256: report.sha256 }));
    } catch (error) {
      problem.textContent = t("error.generic", { detail: error.message });
    } finally {
      button.disabled = false;
    }
  } }, t("report.make")) : null;
  return [
    h("p", {}, h("a", { href: `#/captures/${encodeURIComponent(captureId)}` }, `← ${t("report.back")}`)),
    h("h1", {}, t("report.title", { id: captureId })),
    h("p", { class: "hint" }, t("report.intro")),
    h("div", { class: "actions" },
      makeButton,
      h("a", { class: "button secondary", href: pageUrl, target: "_blank", rel: "noopener" }, t("report.open")),
      h("button", { type: "button", class: "secondary", onclick: () => frame.contentWindow.print() }, t("report.print"))),
    problem,
    h("h2", {}, t("report.made")), list,
    h("h2", {}, t("report.preview")), frame,
  ];
}
