// The recorder page: camera -> MediaRecorder (250 ms slices) -> send queue -> Socket.IO;
// landmarks come back and are drawn over the preview.
import { ChunkSender, SendQueueFull } from "./sendqueue.js";
import { drawFaces } from "./overlay.js";

const TIMESLICE_MS = 250;
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
  banner: $("banner"), bannerText: $("banner-text"), cancelStop: $("cancel-stop"),
};
const STALE_MS = 1000; // landmarks older than this are not drawn over the live picture
const STOP_WAIT_S = 300; // Stop during an outage waits this long for the server

let connection = "offline"; // connected | reconnecting | offline (PROTOCOL.md page hooks)
let outage = null; // {acked} at the moment the connection was lost while recording
let stopWait = null; // {until, cancel} while Stop waits for the server
let lastLandmarkAt = 0;

// State the browser tests read (PROTOCOL.md page hooks), plus a few extras.
const state = (window.camingest = {
  sessionId: null, ackedChunks: 0, landmarkFrames: 0, pendingChunks: 0, bytesSent: 0,
  chunksRecorded: 0, analysedFrames: 0, skippedFrames: 0, filledFrames: 0, snapshots: [], state: "idle", error: null,
});

let stream = null, recorder = null, sender = null, recStart = 0, autoTimer = null;
let frames = []; // landmark frames of this recording, in index order
const recent = []; // arrival times of analysed frames, for the fps figure
let chain = Promise.resolve(); // keeps blob -> ArrayBuffer conversions in recorder order

function say(text, kind = "info") {
  ui.message.hidden = !text;
  ui.message.textContent = text || "";
  ui.message.dataset.kind = kind;
}

function fmtBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(2)} MiB`;
}

function setConnection(value) {
  connection = value;
  ui.conn.dataset.state = value;
  ui.conn.textContent = { connected: "connected", reconnecting: "reconnecting…", offline: "offline" }[value];
  // a new recording needs the server: Record waits for the connection
  ui.record.disabled = value !== "connected" || Boolean(recorder) || Boolean(environmentProblem());
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
  $("s-frames").textContent = `${state.analysedFrames}${state.skippedFrames ? ` (+${state.skippedFrames} skipped)` : ""}`;
  const now = performance.now();
  while (recent.length && recent[0] < now - 2000) recent.shift();
  $("s-fps").textContent = recorder ? `${(recent.length / 2).toFixed(1)} fps` : "—";
  const last = frames[frames.length - 1];
  $("s-lag").textContent = recorder && last ? `${Math.max(0, now - recStart - last.pts_ms).toFixed(0)} ms` : "—";
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

// -- socket ---------------------------------------------------------------------------------
const socket = io({ reconnectionDelay: 250, reconnectionDelayMax: 2000 });
const emit = (event, payload, timeoutMs) => socket.timeout(timeoutMs).emitWithAck(event, payload);

socket.on("connect", () => {
  setConnection("connected");
  if (!sender?.session) return;
  const lost = outage;
  outage = null;
  sender.resume()
    .then(() => sender.drained())
    .then(() => {
      if (lost && state.state === "recording") {
        say(`Reconnected: ${state.ackedChunks - lost.acked} chunks delivered, nothing lost.`, "ok");
      }
    })
    .catch((e) => say(`Resume failed: ${e.message}`, "error"));
});
socket.on("disconnect", () => {
  setConnection(navigator.onLine === false ? "offline" : "reconnecting");
  if (["recording", "finishing", "waiting"].includes(state.state) && !outage) outage = { acked: state.ackedChunks };
  sender?.disconnected();
});
window.addEventListener("offline", () => { if (!socket.connected) setConnection("offline"); });
window.addEventListener("online", () => { if (!socket.connected) setConnection("reconnecting"); });
socket.on("landmarks", (msg) => {
  if (msg.session_id !== state.sessionId) return;
  const now = performance.now();
  for (const frame of msg.frames) {
    frames[frame.index] = frame;
    if (frame.skipped) state.skippedFrames += 1;
    else { state.analysedFrames += 1; recent.push(now); lastLandmarkAt = now; }
  }
  frames = frames.filter(Boolean);
  state.landmarkFrames = state.analysedFrames + state.skippedFrames;
  render();
});
socket.on("snapshot_landmarks", (msg) => {
  const item = state.snapshots.find((s) => s.snapshot_id === msg.snapshot_id);
  if (!item) return;
  item.faces = msg.faces;
  item.draw?.();
});
socket.on("landmarks_filled", (msg) => {
  // after stop, the server filled the frames live analysis had no time for
  if (msg.session_id !== state.sessionId || !state.skippedFrames) return;
  state.filledFrames = state.skippedFrames;
  say(`All ${msg.analysed_frames} frames now have landmarks (${state.skippedFrames} skipped live were filled; ` +
    `faces in ${msg.frames_with_faces}).`, "ok");
});
socket.on("session_error", (msg) => {
  if (msg.session_id === state.sessionId) say(`The server stopped analysing this session: ${msg.message}`, "error");
});

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
    analysedFrames: 0, skippedFrames: 0, filledFrames: 0, snapshots: [], error: null });
  ui.gallery.replaceChildren();
  sender = new ChunkSender({
    emit,
    onChange: (s) => {
      Object.assign(state, { ackedChunks: s.ackedChunks, pendingChunks: s.pending, bytesSent: s.bytesSent });
      if (s.fatal) { state.error = s.fatal; say(`The server refused a chunk: ${s.fatal.message}`, "error"); }
      render();
    },
  });
  try {
    recorder = new MediaRecorder(stream, options);
    await sender.open(recorder.mimeType || options.mimeType, { userAgent: navigator.userAgent, keyframeS });
  } catch (err) {
    stopTracks();
    ui.record.disabled = false;
    return say(`Could not start: ${err.message}`, "error");
  }
  state.sessionId = sender.session.session_id;
  recorder.ondataavailable = (event) => {
    if (!event.data.size) return;
    const tMs = performance.now() - recStart;
    state.chunksRecorded += 1;
    chain = chain.then(async () => {
      try {
        sender.push(await event.data.arrayBuffer(), tMs);
      } catch (err) {
        if (err instanceof SendQueueFull) { say(`Recording stopped: ${err.message}.`, "error"); stop(); }
        else throw err;
      }
    });
  };
  recStart = performance.now();
  lockSettings(true);
  recorder.start(TIMESLICE_MS);
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
  if (!recorder || recorder.state === "inactive") return;
  ui.stop.disabled = ui.snapshot.disabled = true;
  clearInterval(autoTimer);
  const stopped = new Promise((resolve) => recorder.addEventListener("stop", resolve, { once: true }));
  recorder.stop();
  await stopped;
  stopTracks();
  state.state = "finishing";
  say("Sending the last chunks…");
  try {
    await chain;
    if (!socket.connected) await waitForServer();
    const summary = await sender.close();
    state.state = "stopped";
    say(`Saved: ${summary.chunks} chunks, ${summary.frames} frames, ${(summary.duration_ms / 1000).toFixed(1)} s. ` +
      `See it on the Sessions page.`, "ok");
  } catch (err) {
    state.state = "error";
    say(`Stopping failed: ${err.message}. The acknowledged chunks are stored; the server ends the session ` +
      "by itself once it has been idle for a while.", "error");
  }
  recorder = null;
  lockSettings(false);
  setConnection(connection);
  render();
}

function lockSettings(locked) {
  // the recording's codec, keyframes and audio are fixed when it starts: changing them would lie
  for (const input of [ui.codec, ui.keyframe, ui.audio, ui.autosnap]) input.disabled = locked;
}

/** Stop pressed during an outage: wait (visibly, cancellably) for the server, then go on. */
function waitForServer() {
  state.state = "waiting";
  return new Promise((resolve, reject) => {
    const finish = (error) => {
      clearInterval(ticker);
      socket.off("connect", onConnect);
      stopWait = null;
      state.state = "finishing";
      renderBanner();
      if (error) reject(error); else resolve();
    };
    const onConnect = () => finish(null); // the connect handler resumes; close() waits for the queue
    const ticker = setInterval(() => {
      if (performance.now() > stopWait.until) finish(new Error(`the server did not come back within ${STOP_WAIT_S} s`));
      else renderBanner();
    }, 1000);
    stopWait = { until: performance.now() + STOP_WAIT_S * 1000, cancel: () => finish(new Error("stop cancelled")) };
    socket.on("connect", onConnect);
    renderBanner();
  });
}

async function snapshot() {
  if (!stream || !ui.preview.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = ui.preview.videoWidth;
  canvas.height = ui.preview.videoHeight;
  canvas.getContext("2d").drawImage(ui.preview, 0, 0);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.9));
  const ack = await emit("snapshot", { ...sender.session, mime: "image/jpeg", data: await blob.arrayBuffer(),
    t_ms: performance.now() - recStart }, 15000).catch((e) => ({ ok: false, error: { message: e.message } }));
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
      if (recorder && performance.now() - lastLandmarkAt < STALE_MS) drawFaces(ctx, frames[i].faces, ui.mode.value);
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
