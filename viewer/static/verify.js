// The check for courts, with no sign-in: a file's SHA-256 and SM3 are computed here, in the browser (the file
// never leaves this computer; only its digests are looked up), a package is sent for the full verification, and
// a report's QR link opens with its digest already looked up. Every answer is put in plain words.

import { API, api, h, say } from "/viewer/common.js";
import { digestBlob } from "/viewer/digest.js";
import { formatTime, t } from "/viewer/i18n.js";

const HEX64 = /^[0-9a-fA-F]{64}$/;

// -- the custody proof, checked here (RFC 9162 inclusion proof, SHA-256 through Web Crypto) ---------------------

const fromHex = (hex) => new Uint8Array(hex.match(/../g).map((pair) => parseInt(pair, 16)));
const toHex = (bytes) => [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");

async function nodeHash(left, right) {
  const joined = new Uint8Array(1 + left.length + right.length);
  joined[0] = 1;
  joined.set(left, 1);
  joined.set(right, 1 + left.length);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
}

// RFC 9162 2.1.3.2: does the audit path lead from the leaf to the root? null where Web Crypto is missing (a page
// not served over https or from this computer). What it proves is bounded: the leaf and the root are the
// server's; describeMatch compares the root with the newest signed checkpoint the log publishes.
export async function inclusionHolds(proof) {
  if (!globalThis.crypto || !crypto.subtle) return null;
  const hashes = [proof.leaf_hash, proof.root, ...proof.path];
  if (!hashes.every((value) => HEX64.test(String(value)))) return false;
  if (!Number.isSafeInteger(proof.leaf_index) || !Number.isSafeInteger(proof.tree_size) || proof.leaf_index < 0 ||
      proof.leaf_index >= proof.tree_size) return false;
  let index = BigInt(proof.leaf_index);
  let last = BigInt(proof.tree_size) - 1n;
  let hash = fromHex(proof.leaf_hash);
  for (const sibling of proof.path.map(fromHex)) {
    if (last === 0n) return false;
    if ((index & 1n) === 1n || index === last) {
      hash = await nodeHash(sibling, hash);
      if ((index & 1n) === 0n) {
        while ((index & 1n) === 0n && index !== 0n) {
          index >>= 1n;
          last >>= 1n;
        }
      }
    } else {
      hash = await nodeHash(hash, sibling);
    }
    index >>= 1n;
    last >>= 1n;
  }
  return last === 0n && toHex(hash) === proof.root.toLowerCase();
}

let published = null; // the log's newest signed checkpoint, read once per page

async function publishedCheckpoint() {
  if (!published) published = api("/log/checkpoint").catch(() => null);
  return published;
}

// -- the answers, in plain words -------------------------------------------------------------------------------

async function describeMatch(match) {
  const lines = [h("p", {}, t("verify.match", { capture: match.capture_id, role: t(`artifact.${match.role}`, {},
    match.role), at: formatTime(match.acquired_at) }))];
  for (const token of match.timestamps) {
    lines.push(h("p", {}, t(token.local_tsa ? "verify.token_local" : "verify.token_third", {
      tsa: token.tsa, at: token.time ? formatTime(token.time) : "—", serial: token.serial ?? "—" })));
  }
  if (!match.timestamps.length) lines.push(h("p", {}, t("verify.no_token")));
  const proof = match.custody_proof;
  if (proof) {
    const holds = await inclusionHolds(proof);
    const checkpoint = holds ? await publishedCheckpoint() : null;
    const signedRoot = checkpoint && checkpoint.tree_size === proof.tree_size ? checkpoint.root_hash : null;
    let key = "verify.proof_unchecked";
    if (holds === false || (signedRoot && signedRoot !== proof.root)) key = "verify.proof_bad";
    else if (holds && signedRoot) key = "verify.proof_ok";
    else if (holds) key = "verify.proof_ok_unpublished";
    lines.push(h("p", { class: key === "verify.proof_bad" ? "problem" : "" },
      t(key, { seq: proof.seq, size: proof.tree_size })));
    lines.push(h("p", { class: "muted" }, t("verify.proof_scope")));
  } else {
    lines.push(h("p", {}, t("verify.proof_none")));
  }
  return h("div", { class: "match" }, lines);
}

async function lookUp(kind, digest) {
  return api("/verify/hash", { method: "POST", json: { [kind]: digest.toLowerCase() } });
}

// What the hash check says about one digest (or both of a file), as a verdict box.
async function answerBox(found) {
  const registered = found.filter(([, answer]) => answer.registered);
  const box = h("section", { class: `verdict ${registered.length ? "ok" : "unknown"}`, role: "status",
    "aria-live": "polite" });
  if (!registered.length) {
    box.append(h("h3", {}, t("verify.not_registered_title")), h("p", {}, t("verify.not_registered")));
    return box;
  }
  box.append(h("h3", { id: "verdict-title" }, t("verify.registered_title")));
  const both = found.length === 2;
  if (both && registered.length === 1) {
    box.classList.replace("ok", "bad");
    box.append(h("p", { class: "problem" }, t("verify.one_of_two", { which: registered[0][0].toUpperCase() })));
  }
  const [, first] = registered[0];
  for (const match of first.matches) box.append(await describeMatch(match));
  return box;
}

// -- the page --------------------------------------------------------------------------------------------------

function dropZone(id, labelKey, hintKey, accept, onFile) {
  // The browser's own file button speaks the browser's language, not the page's: it is hidden (still focusable)
  // behind a button-like label in the viewer's language.
  const input = h("input", { type: "file", id, accept, class: "visually-hidden" });
  const chosen = h("span", { class: "muted chosen" }, t("verify.no_file"));
  const zone = h("div", { class: "drop" },
    h("label", { for: input.id }, h("strong", {}, t(labelKey))),
    h("p", { class: "muted" }, t(hintKey)), input,
    h("label", { for: input.id, class: "choose", "aria-hidden": "true" }, t("verify.choose")), chosen);
  const picked = (file) => {
    chosen.textContent = file.name;
    onFile(file);
  };
  input.addEventListener("change", () => input.files.length && picked(input.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) picked(event.dataTransfer.files[0]);
  });
  return zone;
}

function fileSection() {
  const result = h("div", { id: "file-result" });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": t("verify.hashing") });
  const onFile = async (file) => {
    progress.hidden = false;
    progress.value = 0;
    result.replaceChildren(h("p", {}, t("verify.hashing_file", { name: file.name })));
    try {
      const digests = await digestBlob(file, { onProgress: (done, total) => { progress.value = total ? done / total : 1; } });
      const shown = h("dl", { class: "facts digests" },
        h("dt", {}, t("verify.file")), h("dd", { class: "wrap" }, file.name),
        h("dt", {}, "SHA-256"), h("dd", { class: "digest", id: "file-sha256" }, digests.sha256),
        h("dt", {}, "SM3"), h("dd", { class: "digest", id: "file-sm3" }, digests.sm3));
      result.replaceChildren(shown, h("p", {}, t("verify.looking_up")));
      const found = [["sha256", await lookUp("sha256", digests.sha256)], ["sm3", await lookUp("sm3", digests.sm3)]];
      result.replaceChildren(shown, await answerBox(found));
    } catch (error) {
      result.replaceChildren(h("p", { class: "problem", role: "alert" }, t("error.generic", { detail: error.message })));
    } finally {
      progress.hidden = true;
    }
  };
  return h("section", { class: "card" }, h("h2", {}, t("verify.file_title")),
    dropZone("verify-file", "verify.file_drop", "verify.file_private", "", onFile), progress, result);
}

function digestSection(query) {
  const value = h("input", { id: "digest-input", spellcheck: "false", autocomplete: "off", maxlength: 64,
    pattern: "[0-9a-fA-F]{64}", class: "digest-input", value: query.get("sha256") || query.get("sm3") || "" });
  const kind = h("select", { id: "digest-kind", "aria-label": t("verify.kind") },
    h("option", { value: "sha256" }, "SHA-256"), h("option", { value: "sm3" }, "SM3"));
  if (query.get("sm3")) kind.value = "sm3";
  const result = h("div", { id: "digest-result" });
  const run = async () => {
    if (!HEX64.test(value.value.trim())) {
      result.replaceChildren(h("p", { class: "problem", role: "alert" }, t("verify.bad_digest")));
      return;
    }
    result.replaceChildren(h("p", {}, t("verify.looking_up")));
    try {
      result.replaceChildren(await answerBox([[kind.value, await lookUp(kind.value, value.value.trim())]]));
    } catch (error) {
      result.replaceChildren(h("p", { class: "problem", role: "alert" }, t("error.generic", { detail: error.message })));
    }
  };
  const form = h("form", { class: "inline-form", onsubmit: (event) => {
    event.preventDefault();
    run();
  } },
  h("label", { for: "digest-input" }, t("verify.digest")), kind, value,
  h("button", { type: "submit", class: "primary" }, t("verify.look_up")));
  if (value.value) run();
  return h("section", { class: "card" }, h("h2", {}, t("verify.digest_title")), form, result);
}

function packageSection() {
  const result = h("div", { id: "package-result" });
  const onFile = async (file) => {
    result.replaceChildren(h("p", {}, t("verify.sending", { name: file.name })));
    try {
      const answer = await fetch(`${API}/verify/package`, { method: "POST", body: file,
        headers: { "Content-Type": "application/zip", Accept: "application/json" } });
      const report = await answer.json();
      if (!answer.ok) throw new Error(report.detail || answer.statusText);
      const failed = report.checks.filter((check) => !check.ok);
      const verdict = h("section", { class: `verdict ${report.ok ? "ok" : "bad"}`, role: "status" },
        h("h3", { id: "package-verdict" }, t(report.ok ? "verify.package_ok" : "verify.package_bad",
          { failed: failed.length, checks: report.checks.length })),
        h("p", {}, t(report.third_party_time ? "verify.third_party_time" : "verify.local_time_only")),
        h("p", {}, t(report.origin_pinned ? "verify.origin_pinned" : "verify.origin_unpinned")));
      const rows = report.checks.map((check) => h("tr", { class: check.ok ? "" : "failed" },
        h("td", {}, check.ok ? t("verify.pass") : t("verify.fail")), h("td", { class: "wrap" }, check.name),
        h("td", { class: "wrap" }, check.subject), h("td", { class: "wrap" }, check.detail)));
      result.replaceChildren(verdict, h("details", { open: !report.ok }, h("summary", {},
        t("verify.checks", { count: report.checks.length })), h("table", {},
        h("thead", {}, h("tr", {}, ["verify.result", "verify.check", "verify.subject", "verify.detail"].map((key) =>
          h("th", { scope: "col" }, t(key))))), h("tbody", {}, rows))));
    } catch (error) {
      result.replaceChildren(h("p", { class: "problem", role: "alert" }, t("error.generic", { detail: error.message })));
    }
  };
  return h("section", { class: "card" }, h("h2", {}, t("verify.package_title")),
    dropZone("verify-package", "verify.package_drop", "verify.package_sent", ".zip,application/zip", onFile), result);
}

export function verifyPage(query) {
  say("");
  return [
    h("h1", {}, t("verify.title")),
    h("p", { class: "hint" }, t("verify.intro")),
    digestSection(query),
    fileSection(),
    packageSection(),
  ];
}
