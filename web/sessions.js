// The sessions browser: list, play with the landmark overlay in sync, snapshots, downloads, delete.
import { appearances, drawFaces, frameAt } from "./overlay.js";

const $ = (id) => document.getElementById(id);
const ui = { upload: $("upload"), file: $("upload-file"), uploadButton: $("upload-button"),
  progress: $("upload-progress"), uploadStatus: $("upload-status"), list: $("list"), detail: $("detail"), player: $("player"), overlay: $("overlay"), mode: $("mode"),
  facts: $("facts"), downloads: $("downloads"), gallery: $("gallery"), del: $("delete"), message: $("message"),
  sessionId: $("session-id"), copyId: $("copy-id"), exportForm: $("export"), exportOverlay: $("export-overlay"),
  exportFormat: $("export-format"), exportButton: $("export-button"), exportProgress: $("export-progress"),
  exportStatus: $("export-status"), appearances: $("appearances"), enrolForm: $("enrol"), enrolName: $("enrol-name"),
  enrolFile: $("enrol-file"), enrolStatus: $("enrol-status"), people: $("people") };
let selected = null, frames = [];
window.camingestSessions = { selected: null, frames: 0, listed: [], upload: { state: "idle" }, export: { state: "idle" } };
let refresh = null;

const UNREACHABLE = "The server cannot be reached. Is camingest running? Try again in a moment.";
/** fetch + JSON: the body, or an Error with the server's message (or UNREACHABLE, `unreachable` set). */
const api = async (url, init) => {
  let r;
  try {
    r = await fetch(url, init);
  } catch {
    // fetch's own "Failed to fetch" says nothing to a person
    throw Object.assign(new Error(UNREACHABLE), { unreachable: true });
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error?.message ?? `HTTP ${r.status}`);
  return body;
};
const when = (iso) => new Date(iso).toLocaleString();
const mb = (n) => `${(n / 1048576).toFixed(1)} MiB`;

function say(text, kind = "info") {
  ui.message.hidden = !text;
  ui.message.textContent = text || "";
  ui.message.dataset.kind = kind;
}

// landmarks the server is still filling (skipped live, or an uploaded video)
const fillText = (fill) => !fill ? "" : fill.state === "queued" ? " · landmarks queued"
  : ` · landmarks ${Math.floor((100 * fill.frames_done) / Math.max(1, fill.frames_total))}%`;

async function loadList() {
  const { sessions } = await api("/api/sessions");
  window.camingestSessions.listed = sessions.map((s) => s.id);
  // while landmarks are being filled, follow them; reload the open session once they are done
  clearTimeout(refresh);
  if (sessions.some((s) => s.fill)) refresh = setTimeout(loadList, 1000);
  const current = sessions.find((s) => s.id === selected?.id);
  if (current && selected.fill && !current.fill) open(current.id);
  if (!sessions.length) {
    ui.list.innerHTML = '<div class="empty">No sessions yet. <a href="/">Record one.</a></div>';
    return;
  }
  ui.list.replaceChildren(...sessions.map((s) => {
    const card = document.createElement("button");
    card.className = "card";
    card.dataset.sessionId = s.id;
    card.setAttribute("aria-selected", String(s.id === selected?.id));
    card.innerHTML = `<div class="when"></div><div class="facts"></div>`;
    card.querySelector(".when").textContent = when(s.created_at);
    const state = document.createElement("span");
    state.className = "state";
    state.dataset.state = s.state;
    state.textContent = s.state;
    card.querySelector(".when").append(" ", state);
    const faces = s.frames_with_faces == null ? "" : ` · faces in ${s.frames_with_faces}`;
    const source = s.imported_from ? `${s.imported_from} · ` : "";
    card.querySelector(".facts").textContent =
      `${source}${(s.duration_ms / 1000).toFixed(1)} s · ${s.frames} frames${faces} · ${mb(s.bytes)} · ${s.snapshots} snapshots${fillText(s.fill)}`;
    card.addEventListener("click", () => choose(s.id));
    return card;
  }));
}

/** A person picked a session: open it, put it in the address (back/forward work), show it. */
async function choose(id) {
  try {
    await open(id);
  } catch (err) {
    return say(err.message, "error");
  }
  if (new URLSearchParams(location.search).get("id") !== id) history.pushState({ id }, "", `?id=${encodeURIComponent(id)}`);
  if (window.matchMedia("(max-width: 900px)").matches) ui.detail.scrollIntoView({ block: "start" }); // below the list on phones
}

window.addEventListener("popstate", () => {
  const id = new URLSearchParams(location.search).get("id");
  if (id) open(id).catch((err) => say(err.message, "error"));
  else { selected = null; ui.detail.hidden = true; ui.player.removeAttribute("src"); window.camingestSessions.selected = null; }
});

async function open(id) {
  selected = await api(`/api/sessions/${id}`);
  window.camingestSessions.selected = id;
  ui.sessionId.textContent = id;
  for (const c of ui.list.children) c.setAttribute?.("aria-selected", String(c.dataset.sessionId === id));
  ui.detail.hidden = false;
  say("");
  const base = `/api/sessions/${id}`;
  ui.player.src = `${base}/recording.webm`;
  const data = await api(`${base}/landmarks`);
  frames = data.frames.filter((f) => f.faces);
  window.camingestSessions.frames = data.frames.length;
  const withFaces = frames.filter((f) => f.faces.length).length;
  const skipped = data.frames.length - frames.length;
  ui.facts.textContent = `${selected.frames} frames · ${data.frames.length - skipped} analysed · faces in ${withFaces}`
    + (skipped ? ` · ${skipped} skipped` : "") + fillText(selected.fill);
  showAppearances(data.frames);
  ui.downloads.replaceChildren(...[
    ["recording.webm", "Recording", `${id}.webm`], ["raw.webm", "Raw stream", `${id}-raw.webm`],
    ["landmarks", "Landmarks JSON", `${id}-landmarks.json`],
  ].map(([path, label, name]) => Object.assign(document.createElement("a"), { href: `${base}/${path}`, textContent: label, download: name })),
  Object.assign(document.createElement("a"), { href: `${base}/preview.mjpg?overlay=${ui.mode.value}`,
    textContent: "Preview (MJPEG)", target: "_blank", rel: "noopener" }));
  ui.gallery.replaceChildren(...(await Promise.all(selected.snapshots.map(async (s) => {
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = `${base}/snapshots/${s.snapshot_id}`;
    const layer = document.createElement("canvas");
    const caption = document.createElement("figcaption");
    figure.append(img, layer, caption);
    img.onload = async () => {
      layer.width = img.naturalWidth;
      layer.height = img.naturalHeight;
      try {
        const { faces } = await api(`${base}/snapshots/${s.snapshot_id}/landmarks`);
        drawFaces(layer.getContext("2d"), faces, "landmarks", 0.5);
        caption.textContent = `${faces.length} face${faces.length === 1 ? "" : "s"} `;
        if (faces.length === 1) caption.append(enrolButton(`${base}/snapshots/${s.snapshot_id}`, s.mime));
      } catch { caption.textContent = "not analysed"; }
    };
    return figure;
  }))));
  showExport(null);
  followExport(id, ui.exportOverlay.value, ui.exportFormat.value); // one made before, or running
  ui.del.disabled = selected.state === "recording";
  ui.del.title = ui.del.disabled ? "A recording in progress cannot be deleted" : "";
}

function paint() {
  const ctx = ui.overlay.getContext("2d");
  const w = ui.player.videoWidth, h = ui.player.videoHeight;
  if (w && (ui.overlay.width !== w || ui.overlay.height !== h)) { ui.overlay.width = w; ui.overlay.height = h; }
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  // MediaRecorder timestamps start at 0, so the player's time is the frames' pts_ms
  const i = frameAt(frames, ui.player.currentTime * 1000);
  if (i >= 0) drawFaces(ctx, frames[i].faces, ui.mode.value);
}
const tick = () => { paint(); requestAnimationFrame(tick); };

ui.del.addEventListener("click", async () => {
  if (!selected || !confirm(`Delete the session of ${when(selected.created_at)}? Its files are removed for good.`)) return;
  try {
    await api(`/api/sessions/${selected.id}`, { method: "DELETE" });
  } catch (err) {
    return say(err.message, "error");
  }
  selected = null;
  history.replaceState(null, "", location.pathname);
  ui.detail.hidden = true;
  ui.player.removeAttribute("src");
  await loadList();
});

// Who appears: names from the landmarks, with first/last time and frames.
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
function showAppearances(frames) {
  const people = appearances(frames);
  window.camingestSessions.appearances = people;
  ui.appearances.replaceChildren(...people.map((p) => Object.assign(document.createElement("li"), {
    textContent: `${p.name}: ${secs(p.first_ms)}–${secs(p.last_ms)}, ${p.frames} frame${p.frames === 1 ? "" : "s"}` })));
}

// The gallery: enrol from a photo or a snapshot, list, remove.
async function loadPeople() {
  try {
    const { people } = await api("/api/gallery");
    window.camingestSessions.people = people.map((p) => p.name);
    ui.people.replaceChildren(...people.map((p) => {
      const item = document.createElement("li");
      const remove = Object.assign(document.createElement("button"), { type: "button", className: "danger", textContent: "Remove" });
      remove.dataset.testid = "remove-person";
      remove.addEventListener("click", async () => {
        if (!confirm(`Remove ${p.name} from the gallery? Their photos and descriptors are deleted.`)) return;
        try {
          await api(`/api/gallery/${encodeURIComponent(p.name)}`, { method: "DELETE" });
        } catch (err) { return say(err.message, "error"); }
        await loadPeople();
      });
      item.append(`${p.name} (${p.images} photo${p.images === 1 ? "" : "s"}) `, remove);
      return item;
    }));
    if (!people.length) ui.people.innerHTML = '<li class="empty">Nobody yet: faces are not named.</li>';
  } catch (err) { ui.people.replaceChildren(Object.assign(document.createElement("li"), { textContent: err.message })); }
}
async function enrol(name, file, fileName) {
  const form = new FormData();
  form.append("name", name);
  form.append("file", file, fileName);
  ui.enrolStatus.dataset.kind = "info";
  ui.enrolStatus.textContent = `Enrolling ${name}…`;
  let body;
  try { body = await api("/api/gallery", { method: "POST", body: form }); } catch (err) {
    ui.enrolStatus.dataset.kind = "error";
    return void (ui.enrolStatus.textContent = err.unreachable ? err.message : `Not enrolled: ${err.message}`);
  }
  ui.enrolStatus.dataset.kind = "info";
  ui.enrolStatus.textContent = `Enrolled ${body.name} (${body.images} photo${body.images === 1 ? "" : "s"}). New frames and reprocessed sessions name them.`;
  await loadPeople();
}
function enrolButton(url, mime) {
  const button = Object.assign(document.createElement("button"), { type: "button", textContent: "Enrol…", title: "Add this face to the gallery" });
  button.dataset.testid = "enrol-snapshot";
  button.addEventListener("click", async () => {
    const name = prompt("Whose face is this?")?.trim();
    if (!name) return;
    const blob = await (await fetch(url)).blob();
    await enrol(name, blob, `snapshot.${mime.split("/")[1] ?? "jpg"}`);
  });
  return button;
}
ui.enrolForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const file = ui.enrolFile.files[0];
  if (file) enrol(ui.enrolName.value.trim(), file, file.name).then(() => ui.enrolForm.reset());
});
loadPeople();

// Export: the server encodes (one at a time), the page follows its progress and offers the file.
let exportTimer = null;
function showExport(job) {
  clearTimeout(exportTimer);
  window.camingestSessions.export = job ?? { state: "idle" };
  ui.exportButton.disabled = selected?.state === "recording" || job?.state === "running";
  ui.exportButton.title = selected?.state === "recording" ? "Stop the recording first" : "";
  ui.exportProgress.hidden = job?.state !== "running";
  if (!job) return void (ui.exportStatus.textContent = "");
  ui.exportStatus.dataset.kind = job.state === "failed" ? "error" : "info";
  if (job.state === "running") {
    ui.exportProgress.value = job.frames_total ? job.frames_done / job.frames_total : 0;
    ui.exportStatus.textContent = `Encoding ${job.frames_done} of ${job.frames_total} frames…`;
  } else if (job.state === "failed") {
    ui.exportStatus.textContent = `Export failed: ${job.error}`;
  } else {
    const link = Object.assign(document.createElement("a"), { href: job.url, download: `${selected.id}-${job.overlay}.${job.format}`,
      textContent: `Download ${job.overlay} .${job.format}` });
    link.dataset.testid = "export-download";
    ui.exportStatus.replaceChildren("Ready: ", link);
  }
}
async function followExport(id, overlay, format) {
  try {
    const { exports } = await api(`/api/sessions/${id}/exports`);
    if (selected?.id !== id) return; // another session was opened meanwhile
    const job = exports.find((e) => e.overlay === overlay && e.format === format);
    showExport(job ?? null);
    if (job?.state === "running") exportTimer = setTimeout(() => followExport(id, overlay, format), 500);
  } catch (err) { showExport({ state: "failed", error: err.message }); }
}
for (const select of [ui.exportOverlay, ui.exportFormat]) {
  select.addEventListener("change", () => selected && followExport(selected.id, ui.exportOverlay.value, ui.exportFormat.value));
}
ui.exportForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!selected) return;
  const id = selected.id, overlay = ui.exportOverlay.value, format = ui.exportFormat.value;
  let body;
  try {
    body = await api(`/api/sessions/${id}/exports`, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ overlay, format }) });
  } catch (err) { return showExport({ state: "failed", error: err.message }); }
  showExport(body);
  followExport(id, overlay, format);
});

// Upload: the file is the raw request body (streamed by the browser, no form encoding), and
// XHR because fetch has no upload progress.
function upload(file) {
  const state = window.camingestSessions.upload = { state: "uploading", name: file.name };
  ui.uploadButton.disabled = true;
  ui.progress.hidden = false;
  ui.progress.value = 0;
  ui.uploadStatus.dataset.kind = "info";
  ui.uploadStatus.textContent = `Uploading ${file.name} (${mb(file.size)})…`;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/sessions?filename=${encodeURIComponent(file.name)}`);
  xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    ui.progress.value = e.loaded / e.total;
    if (e.loaded === e.total) ui.uploadStatus.textContent = `Importing ${file.name}…`;
  };
  const done = async (ok, text, session) => {
    ui.uploadButton.disabled = false;
    ui.progress.hidden = true;
    Object.assign(state, { state: ok ? "done" : "failed", sessionId: session?.id, error: ok ? undefined : text });
    ui.uploadStatus.dataset.kind = ok ? "info" : "error";
    ui.uploadStatus.textContent = text;
    if (ok) { ui.upload.reset(); await loadList(); await open(session.id); }
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: a proxy's page */ }
    if (xhr.status === 201) done(true, `Imported ${file.name}: ${body.frames} frames; landmarks follow.`, body);
    else done(false, `Upload failed: ${body.error?.message ?? `HTTP ${xhr.status}`}`);
  };
  xhr.onerror = () => done(false, "Upload failed: the connection to the server was lost.");
  xhr.send(file);
}
ui.upload.addEventListener("submit", (e) => {
  e.preventDefault();
  if (ui.file.files[0]) upload(ui.file.files[0]);
});

ui.copyId.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(selected.id);
    ui.copyId.textContent = "Copied";
  } catch { // no clipboard (http off localhost): select it for Ctrl-C
    getSelection().selectAllChildren(ui.sessionId);
    ui.copyId.textContent = "Selected: press Ctrl-C";
  }
  setTimeout(() => { ui.copyId.textContent = "Copy"; }, 2000);
});

try {
  await loadList();
  const first = new URLSearchParams(location.search).get("id");
  if (first) await open(first);
} catch (err) {
  ui.list.replaceChildren(Object.assign(document.createElement("div"), { className: "empty", textContent: err.message }));
}
requestAnimationFrame(tick);
