// The recorder page: camera -> camingest-client.js (MediaRecorder in 250 ms slices, acknowledged
// send queue, resume) -> Socket.IO; landmarks come back and are drawn over the preview. The page
// holds only what it shows: the client module is the same one other apps import.
import { createClient } from "./camingest-client.js";
import { drawFaces } from "./overlay.js";

const CODECS = [
  ["VP8", "video/webm;codecs=vp8"],
  ["VP9", "video/webm;codecs=vp9"],
  ["H.264", "video/webm;codecs=h264"],
  ["H.264 (Matroska)", "video/x-matroska;codecs=avc1"],
  ["AV1", "video/webm;codecs=av01"],
];

const $ = (id) => document.getElementById(id);
const ui = {
  record: $("record"), stop: $("stop"), snapshot: $("snapshot"), mode: $("mode"), codec: $("codec"),
  keyframe: $("keyframe"), audio: $("audio"), autosnap: $("autosnap"), preview: $("preview"),
  overlay: $("overlay"), placeholder: $("placeholder"), message: $("message"), conn: $("conn"), gallery: $("gallery"),
  banner: $("banner"), bannerText: $("banner-text"), cancelStop: $("cancel-stop"), overlayStatus: $("overlay-status"),
  storage: $("storage"),
};
const STALE_MS = 1000; // landmarks older than this are not drawn over the live picture
const LATE_MS = 1000; // landmarks this far behind the picture are said to be late, on the picture
// durable_seq not moving for this long while chunks are acknowledged: the server's object storage
// is behind (uploads retried); said on the page, which keeps those chunks to resend meanwhile. On
// object storage durable_seq normally moves once a segment (5 s) is uploaded.
const STORAGE_STALL_MS = 12000;
const STOP_WAIT_S = 300; // Stop during an outage waits this long for the server

let connection = "offline"; // connected | reconnecting | offline (PROTOCOL.md page hooks)
let outage = null; // {acked} at the moment the connection was lost while recording
let stopWait = null; // {until, cancel} while Stop waits for the server
let lastLandmarkAt = 0;

// State the browser tests read (PROTOCOL.md page hooks), plus a few extras.
const state = (window.camingest = {
  sessionId: null, ackedChunks: 0, landmarkFrames: 0, pendingChunks: 0, bytesSent: 0,
  chunksRecorded: 0, analysedFrames: 0, skippedFrames: 0, filledFrames: 0, snapshots: [], state: "idle", error: null,
  lagMs: null, overlay: { state: "idle", text: "" },
  durableSeq: -1, unreplicatedChunks: 0, unreplicatedDropped: 0, storage: "ok", // ok | behind
});
let durableMovedAt = 0; // performance.now() when durable_seq last moved (or nothing waited for it)

let stream = null, recording = null, autoTimer = null;
let frames = []; // landmark frames of this recording, in index order
const recent = []; // arrival times of analysed frames, for the fps figure

function say(text, kind = "info", link = null) {
  ui.message.hidden = !text;
  ui.message.textContent = text || "";
  ui.message.dataset.kind = kind;
  if (link) ui.message.append(Object.assign(document.createElement("a"), link));
}

function fmtBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(2)} MiB`;
}

function setConnection(value) {
  connection = value;
  ui.conn.dataset.state = value;
  ui.conn.textContent = { connected: "connected", reconnecting: "reconnecting…", offline: "offline" }[value];
  // a new recording needs the server: Record waits for the connection
  ui.record.disabled = value !== "connected" || Boolean(recording) || Boolean(environmentProblem());
  renderBanner();
}

function renderBanner() {
  const active = ["recording", "finishing", "waiting"].includes(state.state);
  ui.banner.hidden = !active || connection === "connected";
  if (ui.banner.hidden) return;
  const n = state.pendingChunks;
  let text = `Connection to the server lost: ${n} chunk${n === 1 ? "" : "s"} waiting to be sent. `;
  if (stopWait) {
    const left = Math.max(0, Math.round((stopWait.until - performance.now()) / 1000));
    text += `Stop will finish when the server is back (giving up in ${left} s).`;
  } else {
    text += "Recording goes on; they are sent as soon as it is back.";
  }
  ui.bannerText.textContent = text;
  ui.cancelStop.hidden = !stopWait;
}

function render() {
  renderBanner();
  $("s-session").textContent = state.sessionId ?? "—";
  $("s-acked").textContent = state.ackedChunks;
  $("s-pending").textContent = state.pendingChunks;
  $("s-bytes").textContent = fmtBytes(state.bytesSent);
  const skipped = state.skippedFrames ? Object.assign(document.createElement("span"), { className: "nowrap",
    textContent: `(+${state.skippedFrames} skipped)` }) : "";
  $("s-frames").replaceChildren(`${state.analysedFrames} `, skipped);
  const now = performance.now();
  while (recent.length && recent[0] < now - 2000) recent.shift();
  $("s-fps").textContent = recording ? `${(recent.length / 2).toFixed(1)} fps` : "—";
  const last = frames[frames.length - 1];
  // how far the newest landmarks trail the picture: now, in the recording's time, minus their frame's
  state.lagMs = recording && last ? Math.max(0, Math.round(now - recording.startedAt - last.pts_ms)) : null;
  $("s-lag").textContent = state.lagMs == null ? "—" : `${state.lagMs} ms`;
  renderStorage(now);
  renderOverlayStatus(now);
}

/** Whether the server's store of record keeps up: the chunks this page still holds for it, and a
 * warning while durable_seq has not moved for STORAGE_STALL_MS (nothing is lost: the server has
 * them on its disk and this page can resend them), or once some were let go unconfirmed. */
function renderStorage(now) {
  const n = state.unreplicatedChunks;
  const seconds = ((n * (recording?.timesliceMs ?? 250)) / 1000).toFixed(1);
  if (!n) durableMovedAt = now;
  const behind = Boolean(recording) && n > 0 && now - durableMovedAt > STORAGE_STALL_MS;
  state.storage = behind ? "behind" : "ok";
  $("s-unreplicated").textContent = n ? `${n} (${seconds} s)` : "0";
  const dropped = state.unreplicatedDropped;
  ui.storage.hidden = !behind && !dropped;
  ui.storage.textContent = (behind ? `The server's storage is behind: the last ${seconds} s ` +
    `(${n} chunk${n === 1 ? "" : "s"}) are on the server's disk and kept in this page until storage has them. ` : "")
    + (dropped ? `${dropped} chunk${dropped === 1 ? " was" : "s were"} let go by this page before storage confirmed ` +
      `${dropped === 1 ? "it" : "them"} (its memory was full); the server still has them on its disk.` : "");
}

/** What the overlay is worth, said on the picture itself: analysis starting, how far behind, stalled. */
function renderOverlayStatus(now = performance.now()) {
  let status = { state: "idle", text: "" };
  if (recording && state.state === "recording") {
    if (!state.analysedFrames && !state.skippedFrames) {
      const sent = state.ackedChunks;
      status = { state: "warming", text: sent ? `Starting analysis: no landmarks yet (${sent} chunk${sent === 1 ? "" : "s"} received)`
        : "Starting analysis: waiting for the first chunk" };
    } else if (now - lastLandmarkAt > STALE_MS) {
      status = { state: "stale", text: connection === "connected" ? "Landmarks paused: analysis is catching up" : "Landmarks paused: no connection" };
    } else {
      const s = (state.lagMs / 1000).toFixed(1);
      const late = state.lagMs > LATE_MS;
      const recentSkips = state.skippedFrames && frames.slice(-15).some((f) => f.skipped);
      status = { state: late ? "late" : "ok",
        text: `Landmarks ${s} s behind the picture${late ? ": points trail a moving face" : ""}${recentSkips ? " · skipping frames to keep up" : ""}` };
    }
  }
  state.overlay = status;
  ui.overlayStatus.hidden = status.state === "idle";
  ui.overlayStatus.dataset.state = status.state;
  ui.overlayStatus.textContent = status.text;
}

// -- environment checks ---------------------------------------------------------------------
function environmentProblem() {
  if (!window.isSecureContext) {
    return "This page is not a secure context, so the browser will not open the camera. Open it over https or on localhost.";
  }
  if (!navigator.mediaDevices?.getUserMedia) return "This browser cannot open a camera (no getUserMedia).";
  if (typeof MediaRecorder === "undefined") return "This browser cannot record video (no MediaRecorder).";
  return null;
}

function fillCodecs() {
  const supported = typeof MediaRecorder === "undefined" ? [] : CODECS.filter(([, m]) => MediaRecorder.isTypeSupported(m));
  ui.codec.replaceChildren(...supported.map(([label, mime]) => new Option(label, mime)));
  if (!supported.length) ui.codec.append(new Option("none supported", ""));
}

function cameraError(err) {
  switch (err.name) {
    case "NotAllowedError": return "Camera permission was denied. Allow camera access for this site and try again.";
    case "NotFoundError": case "OverconstrainedError": return "No camera was found. Connect one and try again.";
    case "NotReadableError": return "The camera is in use by another application.";
    default: return `The camera could not be opened: ${err.message || err.name}`;
  }
}

// -- server ---------------------------------------------------------------------------------
const client = await createClient(location.origin);
client.addEventListener("connection", (e) => setConnection(e.detail.state));
window.addEventListener("offline", () => { if (!client.connected) setConnection("offline"); });
window.addEventListener("online", () => { if (!client.connected) setConnection("reconnecting"); });

function onLandmarks({ detail: msg }) {
  const now = performance.now();
  for (const frame of msg.frames) {
    frames[frame.index] = frame;
    if (frame.skipped) state.skippedFrames += 1;
    else { state.analysedFrames += 1; recent.push(now); lastLandmarkAt = now; }
  }
  frames = frames.filter(Boolean);
  state.landmarkFrames = state.analysedFrames + state.skippedFrames;
  render();
}
function onSnapshotLandmarks({ detail: msg }) {
  const item = state.snapshots.find((s) => s.snapshot_id === msg.snapshot_id);
  if (!item) return;
  item.faces = msg.faces;
  item.draw?.();
}
function onFilled({ detail: msg }) {
  // after stop, the server filled the frames live analysis had no time for
  if (!state.skippedFrames) return;
  state.filledFrames = state.skippedFrames;
  say(`All ${msg.analysed_frames} frames now have landmarks (${state.skippedFrames} skipped live were filled; ` +
    `faces in ${msg.frames_with_faces}). `, "ok", { href: `/sessions?id=${encodeURIComponent(msg.session_id)}`,
    textContent: "See it on the Sessions page" });
}
// landmarks_filled comes after stop, when the recording object is done: listen on the client
client.addEventListener("landmarks_filled", (e) => { if (e.detail.session_id === state.sessionId) onFilled(e); });

// -- recording ------------------------------------------------------------------------------
async function record() {
  const problem = environmentProblem();
  if (problem) return say(problem, "error");
  const mime = ui.codec.value;
  if (!mime) return say("This browser supports none of the codecs the server reads (WebM VP8/VP9/H.264).", "error");
  ui.record.disabled = true;
  say("");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
      audio: ui.audio.checked,
    });
  } catch (err) {
    ui.record.disabled = false;
    return say(cameraError(err), "error");
  }
  ui.preview.srcObject = stream;
  ui.placeholder.hidden = true;
  const fullMime = ui.audio.checked && mime.startsWith("video/webm") ? `${mime},opus` : mime;
  const options = { mimeType: MediaRecorder.isTypeSupported(fullMime) ? fullMime : mime };
  const keyframeS = Number(ui.keyframe.value);
  if (keyframeS > 0) options.videoKeyFrameIntervalDuration = keyframeS * 1000; // Chrome; ignored elsewhere

  frames = [];
  Object.assign(state, { ackedChunks: 0, landmarkFrames: 0, pendingChunks: 0, bytesSent: 0, chunksRecorded: 0,
    analysedFrames: 0, skippedFrames: 0, filledFrames: 0, snapshots: [], error: null, durableSeq: -1,
    unreplicatedChunks: 0, unreplicatedDropped: 0, storage: "ok" });
  ui.gallery.replaceChildren();
  try {
    recording = await client.record(stream, { mimeType: options.mimeType, keyframeIntervalMs: options.videoKeyFrameIntervalDuration,
      meta: { userAgent: navigator.userAgent, keyframeS } });
  } catch (err) {
    stopTracks();
    recording = null;
    setConnection(connection);
    return say(`Could not start: ${err.message}`, "error");
  }
  state.sessionId = recording.sessionId;
  recording.addEventListener("progress", () => {
    if (recording.durableSeq !== state.durableSeq) durableMovedAt = performance.now();
    Object.assign(state, { ackedChunks: recording.ackedChunks, pendingChunks: recording.pendingChunks,
      bytesSent: recording.bytesSent, chunksRecorded: recording.chunksRecorded, durableSeq: recording.durableSeq,
      unreplicatedChunks: recording.unreplicatedChunks, unreplicatedDropped: recording.unreplicatedDropped });
    render();
  });
  recording.addEventListener("error", (e) => {
    state.error = e.detail;
    say(e.detail.code === "queue_full" ? `${e.detail.message}.` : `The server refused a chunk: ${e.detail.message}`, "error");
    stop();
  });
  recording.addEventListener("reconnected", (e) => {
    if (state.state === "recording") say(`Reconnected: ${e.detail.delivered} chunks delivered, nothing lost.`, "ok");
  });
  recording.addEventListener("waiting", (e) => { state.state = "waiting"; waitStarted(e.detail.until); });
  recording.addEventListener("landmarks", onLandmarks);
  recording.addEventListener("snapshot_landmarks", onSnapshotLandmarks);
  recording.addEventListener("session_error", (e) => say(`The server stopped analysing this session: ${e.detail.message}`, "error"));
  lockSettings(true);
  state.state = "recording";
  ui.stop.disabled = ui.snapshot.disabled = false;
  const every = Number(ui.autosnap.value);
  if (every > 0) autoTimer = setInterval(snapshot, every * 1000);
  render();
}

function stopTracks() {
  stream?.getTracks().forEach((t) => t.stop());
  stream = null;
}

async function stop() {
  if (!recording || ["finishing", "waiting", "stopped"].includes(state.state)) return;
  ui.stop.disabled = ui.snapshot.disabled = true;
  clearInterval(autoTimer);
  state.state = "finishing";
  say("Sending the last chunks…");
  const cancel = new AbortController();
  stopWait = { until: 0, cancel: () => cancel.abort() };
  try {
    const summary = await recording.stop({ waitForServerMs: STOP_WAIT_S * 1000, signal: cancel.signal });
    state.state = "stopped";
    say(`Saved: ${summary.chunks} chunks, ${summary.frames} frames, ${(summary.duration_ms / 1000).toFixed(1)} s. `, "ok",
      { href: `/sessions?id=${encodeURIComponent(summary.id)}`, textContent: "See it on the Sessions page" });
  } catch (err) {
    state.state = "error";
    say(`Stopping failed: ${err.message}. The acknowledged chunks are stored; the server ends the session ` +
      "by itself once it has been idle for a while.", "error");
  }
  clearInterval(waitTicker);
  stopWait = null;
  stopTracks();
  recording = null;
  lockSettings(false);
  setConnection(connection);
  render();
}

function lockSettings(locked) {
  // the recording's codec, keyframes and audio are fixed when it starts: changing them would lie
  for (const input of [ui.codec, ui.keyframe, ui.audio, ui.autosnap]) input.disabled = locked;
}

/** Stop pressed during an outage: the banner counts down to `until` and offers cancel. */
let waitTicker = null;
function waitStarted(until) {
  stopWait.until = until;
  clearInterval(waitTicker);
  waitTicker = setInterval(renderBanner, 1000);
  renderBanner();
}

async function snapshot() {
  if (!stream || !ui.preview.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = ui.preview.videoWidth;
  canvas.height = ui.preview.videoHeight;
  canvas.getContext("2d").drawImage(ui.preview, 0, 0);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.9));
  const ack = await recording.snapshot(blob);
  if (!ack.ok) return say(`Snapshot refused: ${ack.error.message}`, "error");
  const item = { snapshot_id: ack.snapshot_id, faces: null };
  state.snapshots.push(item);
  const figure = document.createElement("figure");
  const img = new Image();
  img.src = URL.createObjectURL(blob);
  const layer = document.createElement("canvas");
  layer.width = canvas.width;
  layer.height = canvas.height;
  const caption = document.createElement("figcaption");
  caption.textContent = "analysing…";
  figure.append(img, layer, caption);
  ui.gallery.prepend(figure);
  item.draw = () => {
    drawFaces(layer.getContext("2d"), item.faces, "landmarks", 0.5);
    caption.textContent = `${item.faces.length} face${item.faces.length === 1 ? "" : "s"}`;
  };
  if (item.faces) item.draw();
}

// -- overlay --------------------------------------------------------------------------------
function paint() {
  const ctx = ui.overlay.getContext("2d");
  const w = ui.preview.videoWidth, h = ui.preview.videoHeight;
  if (w && (ui.overlay.width !== w || ui.overlay.height !== h)) { ui.overlay.width = w; ui.overlay.height = h; }
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  // the newest analysed frame: its pts is the capture time of the frame on screen minus the lag
  for (let i = frames.length - 1; i >= 0 && i >= frames.length - 10; i--) {
    // stale landmarks (the connection is down, analysis lags) would sit on the wrong face: hidden
    if (frames[i]?.faces) {
      if (recording && performance.now() - lastLandmarkAt < STALE_MS) drawFaces(ctx, frames[i].faces, ui.mode.value);
      break;
    }
  }
  requestAnimationFrame(paint);
}

ui.record.addEventListener("click", record);
ui.stop.addEventListener("click", stop);
ui.snapshot.addEventListener("click", snapshot);
ui.cancelStop.addEventListener("click", () => stopWait?.cancel());
fillCodecs();
setConnection("offline");
const problem = environmentProblem();
if (problem) say(problem, "error");
setInterval(render, 500);
requestAnimationFrame(paint);
