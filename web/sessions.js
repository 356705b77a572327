// The sessions browser: pages of cards (a thumbnail, who appears) with filters, play with the
// landmark overlay in sync and a timeline to click on, snapshots, downloads, export, delete, the
// gallery (photos, enrolment with look-alike warnings).
import { appearances, drawFaces, drawTimeline, frameAt, timelineAt } from "./overlay.js";

const $ = (id) => document.getElementById(id);
const ui = { upload: $("upload"), file: $("upload-file"), uploadButton: $("upload-button"),
  progress: $("upload-progress"), uploadStatus: $("upload-status"), list: $("list"), detail: $("detail"), player: $("player"), overlay: $("overlay"), mode: $("mode"),
  facts: $("facts"), downloads: $("downloads"), gallery: $("gallery"), del: $("delete"), message: $("message"),
  sessionId: $("session-id"), copyId: $("copy-id"), exportForm: $("export"), exportOverlay: $("export-overlay"),
  exportFormat: $("export-format"), exportButton: $("export-button"), exportProgress: $("export-progress"),
  exportStatus: $("export-status"), appearances: $("appearances"), enrolForm: $("enrol"), enrolName: $("enrol-name"),
  enrolFile: $("enrol-file"), enrolStatus: $("enrol-status"), people: $("people"), more: $("more"),
  filters: $("filters"), fState: $("f-state"), fPerson: $("f-person"), fSince: $("f-since"), fUntil: $("f-until"),
  fMeta: $("f-meta"), toast: $("toast"), timeline: $("timeline"), legend: $("timeline-legend"), frame: $("frame"),
  timelineWrap: $("timeline-wrap"), failedReason: $("failed-reason"), playhead: $("playhead") };
let selected = null, frames = [], allFrames = [];
window.camingestSessions = { selected: null, frames: 0, listed: [], upload: { state: "idle" }, export: { state: "idle" },
  nextCursor: null, query: "", opened: 0, fill: null };
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
  if (!r.ok) throw Object.assign(new Error(body.error?.message ?? `HTTP ${r.status}`), { status: r.status, error: body.error });
  return body;
};
// who this page is (GET /api/me): what its role may not do is not offered (a viewer: no delete,
// no uploads, no gallery changes; a recorder reading its own sessions: nor exports)
const me = await api("/api/me").catch(() => ({ role: "admin", sub: null }));
const admin = me.role === "admin";
window.camingestSessions.role = me.role;
if (!admin) {
  for (const el of [ui.del, ui.upload, ui.enrolForm]) el.remove();
  if (me.role !== "viewer") ui.exportForm.remove();
}
const when = (iso) => new Date(iso).toLocaleString();
const mb = (n) => `${(n / 1048576).toFixed(1)} MiB`;

function say(text, kind = "info") {
  ui.message.hidden = !text;
  ui.message.textContent = text || "";
  ui.message.dataset.kind = kind;
}

/** A notice where the person is looking, whatever is scrolled where (it does not move the page). */
let toastTimer = null;
function toast(text, kind = "ok") {
  clearTimeout(toastTimer);
  ui.toast.textContent = text;
  ui.toast.dataset.kind = kind;
  ui.toast.hidden = false;
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 8000);
}

// landmarks the server is still filling (skipped live, or an uploaded video)
const fillText = (fill) => !fill ? "" : fill.state === "queued" ? " · landmarks queued"
  : ` · landmarks ${Math.floor((100 * fill.frames_done) / Math.max(1, fill.frames_total))}%`;

/** The filters as GET /api/sessions' query (dates are the person's days: local midnight in UTC). */
function filterQuery() {
  const q = new URLSearchParams();
  if (ui.fState.value) q.set("state", ui.fState.value);
  if (ui.fPerson.value) q.set("person", ui.fPerson.value);
  if (ui.fSince.value) q.set("since", new Date(`${ui.fSince.value}T00:00:00`).toISOString());
  if (ui.fUntil.value) {
    const end = new Date(`${ui.fUntil.value}T00:00:00`);
    end.setDate(end.getDate() + 1); // the day is included
    q.set("until", end.toISOString());
  }
  if (ui.fMeta.value.trim()) q.set("meta", ui.fMeta.value.trim());
  return q;
}

const PAGE = 30; // cards per page: thousands of sessions are never loaded at once
let listed = []; // the summaries of the pages loaded so far

/** Load the first page again (or, with `more`, the next one) and draw the cards. */
async function loadList({ more = false } = {}) {
  const q = filterQuery();
  q.set("limit", String(more ? PAGE : Math.max(PAGE, listed.length)));
  if (more && window.camingestSessions.nextCursor) q.set("cursor", window.camingestSessions.nextCursor);
  const { sessions, next_cursor: next } = await api(`/api/sessions?${q}`);
  listed = more ? [...listed, ...sessions] : sessions;
  Object.assign(window.camingestSessions, { listed: listed.map((s) => s.id), nextCursor: next ?? null, query: filterQuery().toString() });
  ui.more.hidden = !next;
  // while landmarks are being filled, follow them; reload the open session once they are done
  clearTimeout(refresh);
  if (listed.some((s) => s.fill)) refresh = setTimeout(loadList, 1000);
  const current = listed.find((s) => s.id === selected?.id);
  if (current && selected.fill && !current.fill) open(current.id);
  if (!listed.length) {
    ui.list.innerHTML = filterQuery().toString() ? '<div class="empty">No session matches these filters.</div>'
      : '<div class="empty">No sessions yet. <a href="/">Record one.</a></div>';
    return;
  }
  ui.list.replaceChildren(...listed.map(card));
}

/** One session's card: its picture (a frame with a face), when, state, id or label, who, facts. */
function card(s) {
  const el = document.createElement("button");
  el.className = "card";
  el.dataset.sessionId = s.id;
  el.dataset.state = s.state;
  el.setAttribute("aria-selected", String(s.id === selected?.id));
  const picture = document.createElement("div");
  picture.className = "thumb";
  if (s.frames > 0) {
    const img = Object.assign(new Image(), { src: `/api/sessions/${s.id}/thumbnail.jpg`, alt: "", loading: "lazy", decoding: "async" });
    img.onerror = () => img.replaceWith(Object.assign(document.createElement("span"), { textContent: "no picture" }));
    picture.append(img);
  } else {
    picture.append(Object.assign(document.createElement("span"), { textContent: s.state === "failed" ? "failed" : "no frames yet" }));
  }
  const text = document.createElement("div");
  text.className = "text";
  const head = document.createElement("div");
  head.className = "when";
  head.textContent = when(s.created_at);
  const state = Object.assign(document.createElement("span"), { className: "state", textContent: s.state });
  state.dataset.state = s.state;
  head.append(" ", state);
  const label = s.meta?.label ?? s.imported_from;
  const id = Object.assign(document.createElement("div"), { className: "id" });
  id.append(Object.assign(document.createElement("code"), { textContent: s.id }));
  if (label) id.append(" · ", String(label));
  if (s.sub) {
    const by = Object.assign(document.createElement("span"), { className: "sub", textContent: ` · by ${s.sub}` });
    by.dataset.testid = "session-sub";
    id.append(by);
  }
  text.append(head, id);
  if (s.people?.length) {
    text.append(Object.assign(document.createElement("div"), { className: "who", textContent: s.people.join(", ") }));
  }
  const faces = s.frames_with_faces == null ? "" : ` · faces in ${s.frames_with_faces}`;
  text.append(Object.assign(document.createElement("div"), { className: "facts",
    textContent: `${(s.duration_ms / 1000).toFixed(1)} s · ${s.frames} frames${faces} · ${mb(s.bytes)} · ${s.snapshots} snapshots${fillText(s.fill)}` }));
  if (s.state === "failed") {
    const why = Object.assign(document.createElement("div"), { className: "why",
      textContent: `Failed: ${s.error ?? "no reason was recorded"}` });
    why.dataset.testid = "failed-why";
    text.append(why);
  }
  el.append(picture, text);
  el.addEventListener("click", () => choose(s.id));
  return el;
}

ui.more.addEventListener("click", () => loadList({ more: true }).catch((err) => toast(err.message, "error")));
ui.filters.addEventListener("submit", (e) => {
  e.preventDefault();
  loadList().catch((err) => { ui.list.replaceChildren(Object.assign(document.createElement("div"), { className: "empty", textContent: err.message })); });
});
ui.filters.addEventListener("reset", () => setTimeout(() => ui.filters.requestSubmit(), 0));

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
  const failed = selected.state === "failed" && !selected.frames;
  ui.failedReason.hidden = !failed;
  ui.failedReason.textContent = failed ? `This session failed while recording: ${selected.error ?? "no reason was recorded"}. ` +
    "It has no frames: there is nothing to play or export." : "";
  ui.frame.hidden = ui.timelineWrap.hidden = ui.exportForm.hidden = failed;
  // the same session opened again in the same state (its landmarks were filled meanwhile) keeps
  // playing where it was; one that was recording when loaded has a longer file now
  const src = `${base}/recording.webm`;
  if (failed) ui.player.removeAttribute("src");
  else if (ui.player.getAttribute("src") !== src || ui.player.dataset.state !== selected.state) ui.player.src = src;
  ui.player.dataset.state = selected.state;
  const data = await api(`${base}/landmarks`);
  allFrames = data.frames;
  frames = data.frames.filter((f) => f.faces);
  window.camingestSessions.frames = data.frames.length;
  showTimeline();
  const withFaces = frames.filter((f) => f.faces.length).length;
  const skipped = data.frames.length - frames.length;
  ui.facts.textContent = `${selected.frames} frames · ${data.frames.length - skipped} analysed · faces in ${withFaces}`
    + (skipped ? ` · ${skipped} skipped` : "") + fillText(selected.fill) + (selected.sub ? ` · recorded by ${selected.sub}` : "")
    + (selected.held ? " · held (kept by retention)" : "");
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
        if (faces.length === 1 && admin) caption.append(enrolButton(`${base}/snapshots/${s.snapshot_id}`, s.mime));
      } catch { caption.textContent = "not analysed"; }
    };
    return figure;
  }))));
  showExport(null);
  followExport(id, ui.exportOverlay.value, ui.exportFormat.value); // one made before, or running
  ui.del.disabled = selected.state === "recording";
  ui.del.title = ui.del.disabled ? "A recording in progress cannot be deleted" : "";
  Object.assign(window.camingestSessions, { opened: window.camingestSessions.opened + 1, fill: selected.fill?.state ?? null });
}

function paint() {
  const ctx = ui.overlay.getContext("2d");
  const w = ui.player.videoWidth, h = ui.player.videoHeight;
  if (w && (ui.overlay.width !== w || ui.overlay.height !== h)) { ui.overlay.width = w; ui.overlay.height = h; }
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  // MediaRecorder timestamps start at 0, so the player's time is the frames' pts_ms
  const i = frameAt(frames, ui.player.currentTime * 1000);
  if (i >= 0) drawFaces(ctx, frames[i].faces, ui.mode.value);
  // where the player is, on the timeline (by frame, as the timeline is drawn)
  const at = frameAt(allFrames, ui.player.currentTime * 1000);
  const n = Math.max(selected?.frames ?? 0, allFrames.length, 1);
  ui.playhead.style.left = `${(100 * Math.max(0, at >= 0 ? allFrames[at].index : 0)) / n}%`;
}
const tick = () => { paint(); requestAnimationFrame(tick); };

ui.del.addEventListener("click", async () => {
  if (!selected || !confirm(`Delete the session of ${when(selected.created_at)}? Its files are removed for good.`)) return;
  const gone = selected;
  try {
    await api(`/api/sessions/${gone.id}`, { method: "DELETE" });
  } catch (err) {
    return say(err.message, "error");
  }
  toast(`Deleted the session of ${when(gone.created_at)} (${gone.id}) and its files.`);
  window.camingestSessions.deleted = gone.id;
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

// The timeline under the player: faces present, who, frames without landmarks; a click seeks.
const COLOURS = ["#3ddc97", "#59a5ff", "#ffb454", "#d88cff", "#ff7aa8", "#7be0e0"];
function showTimeline() {
  const people = appearances(allFrames).map((p) => p.name).filter((n) => n !== "unknown");
  const colours = Object.fromEntries(people.map((name, i) => [name, COLOURS[i % COLOURS.length]]));
  const width = Math.max(200, Math.round(ui.timeline.getBoundingClientRect().width || 600));
  ui.timeline.width = width * (window.devicePixelRatio || 1);
  ui.timeline.height = 36 * (window.devicePixelRatio || 1);
  const summary = drawTimeline(ui.timeline.getContext("2d"), allFrames, selected.frames, colours);
  window.camingestSessions.timeline = summary;
  const key = (colour, text) => {
    const item = Object.assign(document.createElement("span"), { className: "key" });
    const swatch = Object.assign(document.createElement("i"), {});
    swatch.style.background = colour;
    item.append(swatch, text);
    return item;
  };
  ui.legend.replaceChildren(
    ...people.map((name) => key(colours[name], name)),
    key("#9aa3b2", people.length ? "a face nobody enrolled" : "a face"),
    key("#3a3f4b", "no face"),
    ...(summary.missing ? [key("repeating-linear-gradient(45deg,#ff5d6c 0 3px,transparent 3px 6px)",
      `${summary.missing} frame${summary.missing === 1 ? "" : "s"} without landmarks (not analysed yet, or skipped live and not filled yet)`)] : []),
  );
}
ui.timeline.addEventListener("click", (e) => {
  if (!selected || !allFrames.length) return;
  const r = ui.timeline.getBoundingClientRect();
  const frame = timelineAt(allFrames, selected.frames, (e.clientX - r.left) / r.width);
  if (frame) {
    ui.player.currentTime = frame.pts_ms / 1000;
    window.camingestSessions.seekedTo = frame.index;
  }
});
window.addEventListener("resize", () => selected && allFrames.length && showTimeline());

// The gallery: enrol from a photo or a snapshot, list, remove.
async function loadPeople() {
  try {
    const { people } = await api("/api/gallery");
    window.camingestSessions.people = people.map((p) => p.name);
    const chosen = ui.fPerson.value;
    ui.fPerson.replaceChildren(new Option("anyone", ""), ...people.map((p) => new Option(p.name, p.name)), new Option("someone unknown", "unknown"));
    ui.fPerson.value = chosen;
    ui.people.replaceChildren(...people.map((p) => {
      const item = document.createElement("li");
      item.dataset.personId = p.id;
      // addresses carry the person's id, never the name (any name, "{x}", "." or "a/b", can be removed)
      const photo = Object.assign(new Image(), { src: `/api/gallery/${encodeURIComponent(p.id)}/photo`, alt: `photo of ${p.name}`,
        className: "face", loading: "lazy" });
      const remove = Object.assign(document.createElement("button"), { type: "button", className: "danger", textContent: "Remove" });
      remove.dataset.testid = "remove-person";
      remove.addEventListener("click", async () => {
        if (!confirm(`Remove ${p.name} from the gallery? Their photos and descriptors are deleted.`)) return;
        try {
          await api(`/api/gallery/${encodeURIComponent(p.id)}`, { method: "DELETE" });
        } catch (err) { return toast(err.message, "error"); }
        toast(`Removed ${p.name} and their photos from the gallery.`);
        await loadPeople();
      });
      const label = Object.assign(document.createElement("span"), { className: "name", textContent: `${p.name} (${p.images} photo${p.images === 1 ? "" : "s"})` });
      item.append(photo, label);
      if (admin) item.append(remove);
      return item;
    }));
    if (!people.length) ui.people.innerHTML = '<li class="empty">Nobody yet: faces are not named.</li>';
  } catch (err) { ui.people.replaceChildren(Object.assign(document.createElement("li"), { textContent: err.message })); }
}
/**
 * Enrol `file` as `name`, saying how it went in `status` (where the person acted). A face that
 * looks like someone enrolled, or a name taken by another face, is answered 409 with the match:
 * the person then chooses (enrol anyway, or add it to the one it looks like). Resolves to true
 * once enrolled.
 */
async function enrol(name, file, fileName, status = ui.enrolStatus, confirmed = false) {
  const form = new FormData();
  form.append("name", name);
  form.append("file", file, fileName);
  if (confirmed) form.append("confirm", "1");
  status.dataset.kind = "info";
  status.textContent = `Enrolling ${name}…`;
  let body;
  try { body = await api("/api/gallery", { method: "POST", body: form }); } catch (err) {
    status.dataset.kind = "error";
    if (err.status === 409 && err.error?.code === "conflict") {
      status.dataset.kind = "warn";
      status.textContent = `Not enrolled yet: ${err.message.replace(/, or send confirm=1 to .*$/, "")}. `;
      const anyway = Object.assign(document.createElement("button"), { type: "button",
        textContent: err.error.same_name ? `Add to ${name} anyway` : `Enrol as ${name} anyway` });
      anyway.dataset.testid = "enrol-anyway";
      anyway.addEventListener("click", () => enrol(name, file, fileName, status, true));
      status.append(anyway);
      // the face looks like someone's, or the name looks like an enrolled one ("Аda", "Ada")
      const match = err.error.matches?.[0] ?? (err.error.lookalike_names?.length ? { name: err.error.lookalike_names[0] } : null);
      if (match) {
        const other = Object.assign(document.createElement("button"), { type: "button", textContent: `Add to ${match.name}` });
        other.dataset.testid = "enrol-as-match";
        other.addEventListener("click", () => enrol(match.name, file, fileName, status));
        status.append(" ", other);
      }
      status.scrollIntoView({ block: "nearest" }); // the answer where the person acted, in view
      return false;
    }
    status.textContent = err.unreachable ? err.message : `Not enrolled: ${err.message}`;
    status.scrollIntoView({ block: "nearest" });
    return false;
  }
  status.dataset.kind = "ok";
  status.textContent = `Enrolled ${body.name} (${body.images} photo${body.images === 1 ? "" : "s"}). New frames and reprocessed sessions name them.`;
  status.scrollIntoView({ block: "nearest" });
  await loadPeople();
  return true;
}
/** Enrol a snapshot's face from its own caption: the name asked there, the answer shown there. */
function enrolButton(url, mime) {
  const box = document.createElement("form");
  box.className = "enrol-here";
  const name = Object.assign(document.createElement("input"), { type: "text", placeholder: "Whose face is this?", maxLength: 100, required: true });
  name.dataset.testid = "snapshot-enrol-name";
  const button = Object.assign(document.createElement("button"), { type: "submit", textContent: "Enrol", title: "Add this face to the gallery" });
  button.dataset.testid = "enrol-snapshot";
  const status = Object.assign(document.createElement("div"), { className: "facts", role: "status" });
  status.dataset.testid = "snapshot-enrol-status";
  box.append(name, button, status);
  box.addEventListener("submit", async (e) => {
    e.preventDefault();
    const who = name.value.trim();
    if (!who) return;
    const blob = await (await fetch(url)).blob();
    await enrol(who, blob, `snapshot.${mime.split("/")[1] ?? "jpg"}`, status);
  });
  return box;
}
if (admin) ui.enrolForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const file = ui.enrolFile.files[0];
  if (file) enrol(ui.enrolName.value.trim(), file, file.name).then((done) => done && ui.enrolForm.reset());
});
if (me.role !== "recorder") loadPeople(); // the gallery: a viewer's and an admin's

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
    // the bar and its text from the same two numbers (a stream can decode more frames than counted)
    const total = Math.max(job.frames_total, job.frames_done, 1);
    ui.exportProgress.max = total;
    ui.exportProgress.value = job.frames_done;
    ui.exportStatus.textContent = `Encoding ${job.frames_done} of ${total} frames (${Math.floor((100 * job.frames_done) / total)}%)…`;
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
if (admin) ui.upload.addEventListener("submit", (e) => {
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
