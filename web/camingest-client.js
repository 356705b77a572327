// camingest-client.js: record a MediaStream into a camingest server from any page.
//
//   import { createClient } from "https://camingest.example/static/camingest-client.js";
//   const client = await createClient("https://camingest.example", { token });
//   const rec = await client.record(stream);             // MediaRecorder, 250 ms slices
//   rec.addEventListener("landmarks", (e) => draw(e.detail.frames));
//   const summary = await rec.stop();                    // every chunk acknowledged, then stop
//
// Every chunk is kept until the server acknowledges it as stored; after a lost connection the
// session is resumed and the rest resent (sendqueue.js). The connection state is an event of the
// client, so a page can say what is going on. Socket.IO's browser client is loaded from the same
// server when the page has not loaded it itself. From another origin, the server must list that
// origin in cors_origins (CAMINGEST_CORS_ORIGINS).
import { ChunkSender, SendQueueFull } from "./sendqueue.js";

export { SendQueueFull };

const SOCKET_IO = "/static/vendor/socket.io-4.8.4.min.js";
export const TIMESLICE_MS = 250;
const RECENT_SESSIONS = 16;

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), { src, crossOrigin: "anonymous" });
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}: is the camingest server reachable?`));
    document.head.append(script);
  });
}

/** A client connected (or connecting, and reconnecting for ever) to the server at `url`. */
export async function createClient(url = location.origin, options = {}) {
  if (!globalThis.io) await loadScript(new URL(SOCKET_IO, url).href);
  return new CamingestClient(url, { transports: await transportsOf(url, options.token), ...options });
}

/** The Socket.IO transports the server asks for: WebSocket only when several nodes serve it
 * behind one address (no sticky routing); Socket.IO's default where it cannot say. */
async function transportsOf(url, token) {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(new URL("/api/config", url).href, { headers, credentials: "include" });
    if (response.ok) return (await response.json()).transports;
  } catch {
    // an older server, or none yet: the connection's own errors will say so
  }
  return undefined;
}

/**
 * Events: "connection" {state: "connected" | "reconnecting" | "offline"}, and every server event
 * ("landmarks", "snapshot_landmarks", "landmarks_filled", "session_error") for all sessions; a
 * Recording gets those of its own session.
 */
export class CamingestClient extends EventTarget {
  constructor(url = location.origin, { token, transports, ackTimeoutMs = 15000, io = globalThis.io } = {}) {
    super();
    this.ackTimeoutMs = ackTimeoutMs;
    this.state = "offline";
    this.recordings = new Set(); // recordings not yet stopped: resumed after a reconnect
    // recordings by session id, for the server's events: kept after stop (the last frames'
    // landmarks and the fill arrive later), the oldest dropped beyond RECENT_SESSIONS
    this.bySession = new Map();
    this.socket = io(url, {
      auth: token ? { token } : undefined, transports, reconnectionDelay: 250, reconnectionDelayMax: 2000,
    });
    this.socket.on("connect", () => {
      this._setState("connected");
      for (const recording of this.recordings) recording._reconnected();
    });
    this.socket.on("disconnect", () => {
      this._setState(navigator.onLine === false ? "offline" : "reconnecting");
      for (const recording of this.recordings) recording._disconnected();
    });
    this.socket.on("connect_error", (err) => {
      this._setState(navigator.onLine === false ? "offline" : "reconnecting");
      this.dispatchEvent(new CustomEvent("connect_error", { detail: { message: err.message } }));
    });
    for (const name of ["landmarks", "snapshot_landmarks", "landmarks_filled", "session_error"]) {
      this.socket.on(name, (msg) => {
        this.dispatchEvent(new CustomEvent(name, { detail: msg }));
        this.bySession.get(msg.session_id)?.dispatchEvent(new CustomEvent(name, { detail: msg }));
      });
    }
  }

  get connected() {
    return this.state === "connected";
  }

  /** emit with an acknowledgement; a lost connection or no answer gives {ok: false, error: timeout}. */
  emit(event, payload, timeoutMs = this.ackTimeoutMs) {
    return this.socket.timeout(timeoutMs).emitWithAck(event, payload).catch((err) => {
      // no answer although connected: a stalled connection (a frozen or cut-off node behind a
      // load balancer answers nothing until engine.io's ping timeout, ~45 s). Closing the
      // transport makes Socket.IO reconnect at once, maybe to another node, and resume.
      if (this.connected) this.socket.io.engine?.close();
      throw err;
    });
  }

  /** Resolves once connected; rejects after `timeoutMs` or when `signal` aborts. */
  whenConnected({ timeoutMs = 15000, signal } = {}) {
    if (this.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (error) => {
        clearTimeout(timer);
        this.removeEventListener("connection", onChange);
        signal?.removeEventListener("abort", onAbort);
        if (error) reject(error); else resolve();
      };
      const onChange = () => this.connected && done(null);
      const onAbort = () => done(new Error("cancelled"));
      const timer = setTimeout(() => done(new Error(`the server did not answer within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
      this.addEventListener("connection", onChange);
      signal?.addEventListener("abort", onAbort);
    });
  }

  /**
   * Start recording `stream` into a new session. Options: mimeType (first supported WebM codec
   * by default), timesliceMs (250), keyframeIntervalMs (Chrome), meta (stored with the session),
   * maxChunks / maxBytes (kept unacknowledged, or acknowledged but not yet durable, at most; past it the
   * oldest durable-pending ones are let go, and unacknowledged ones beyond it fail the recording with SendQueueFull).
   */
  async record(stream, options = {}) {
    const recording = new Recording(this, stream, options);
    await recording._start();
    this.recordings.add(recording);
    this.bySession.set(recording.sessionId, recording);
    while (this.bySession.size > RECENT_SESSIONS) this.bySession.delete(this.bySession.keys().next().value);
    return recording;
  }

  close() {
    this.socket.close();
    this._setState("offline");
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("connection", { detail: { state } }));
  }
}

export const PREFERRED_TYPES = ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm;codecs=h264", "video/webm"];

/**
 * One recording = one session. Properties: sessionId, state ("recording" | "finishing" |
 * "waiting" | "stopped" | "failed"), ackedChunks, pendingChunks, bytesSent, chunksRecorded,
 * startedAt (performance.now() of the first slice). Events: "progress" (the counters changed),
 * "reconnected" {delivered}, "waiting" {until} (stop waits for the server), "error" {code, message}
 * (the server refused the recording, or the queue overflowed: recording stops), and the session's
 * server events.
 */
export class Recording extends EventTarget {
  constructor(client, stream, { mimeType, timesliceMs = TIMESLICE_MS, keyframeIntervalMs, meta = {}, maxChunks, maxBytes } = {}) {
    super();
    this.client = client;
    this.stream = stream;
    this.timesliceMs = timesliceMs;
    this.meta = meta;
    const type = mimeType ?? PREFERRED_TYPES.find((t) => MediaRecorder.isTypeSupported(t));
    const recorderOptions = { mimeType: type };
    if (keyframeIntervalMs) recorderOptions.videoKeyFrameIntervalDuration = keyframeIntervalMs;
    this.recorder = new MediaRecorder(stream, recorderOptions);
    this.state = "starting";
    this.chunksRecorded = 0;
    this.startedAt = 0;
    this._chain = Promise.resolve(); // blob -> bytes conversions, kept in recorder order
    this._outage = null;
    const limits = Object.fromEntries(Object.entries({ maxChunks, maxBytes }).filter(([, v]) => v !== undefined));
    this.sender = new ChunkSender({
      emit: (event, payload, timeoutMs) => client.emit(event, payload, timeoutMs),
      ackTimeoutMs: client.ackTimeoutMs,
      ...limits,
      onChange: (s) => {
        this.dispatchEvent(new CustomEvent("progress"));
        if (s.fatal && !this._failed) this._fail(s.fatal);
      },
    });
  }

  get sessionId() { return this.sender.session?.session_id ?? null; }
  get ackedChunks() { return this.sender.ackedChunks; }
  get pendingChunks() { return this.sender.pending; }
  get bytesSent() { return this.sender.bytesSent; }
  /** Highest seq the server's store of record has (v1.2 `durable_seq`; -1: none yet). */
  get durableSeq() { return this.sender.durableSeq; }
  /** Acknowledged chunks this page still keeps because the store of record does not have them yet. */
  get unreplicatedChunks() { return this.sender.unreplicated; }
  /** Acknowledged chunks let go (the queue was full) before the store of record had them. */
  get unreplicatedDropped() { return this.sender.unreplicatedDropped; }
  get mimeType() { return this.recorder.mimeType; }

  async _start() {
    if (!this.client.connected) await this.client.whenConnected({ timeoutMs: this.client.ackTimeoutMs });
    await this.sender.open(this.recorder.mimeType, this.meta);
    this.recorder.ondataavailable = (event) => {
      if (!event.data.size) return;
      const tMs = performance.now() - this.startedAt;
      this.chunksRecorded += 1;
      this._chain = this._chain.then(async () => {
        try {
          this.sender.push(await event.data.arrayBuffer(), tMs);
        } catch (err) {
          if (!(err instanceof SendQueueFull)) throw err;
          this._fail({ code: "queue_full", message: `recording stopped: ${err.message}` });
        }
      });
    };
    this.startedAt = performance.now();
    this.recorder.start(this.timesliceMs);
    this.state = "recording";
  }

  /** Send a still image (a Blob, e.g. from canvas.toBlob) of this session; resolves to its ack. */
  async snapshot(blob, tMs = performance.now() - this.startedAt) {
    return this.client.emit("snapshot", { ...this.sender.session, mime: blob.type || "image/jpeg",
      data: await blob.arrayBuffer(), t_ms: tMs }).catch((e) => ({ ok: false, error: { code: "timeout", message: e.message } }));
  }

  /**
   * Stop the camera recording, deliver every chunk and end the session; resolves to its summary.
   * While the server is unreachable it waits (a "waiting" event with the deadline) up to
   * `waitForServerMs`, or until `signal` aborts.
   */
  async stop({ waitForServerMs = 300_000, signal } = {}) {
    if (this.recorder.state !== "inactive") {
      const stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
      this.recorder.stop();
      await stopped;
    }
    this.state = "finishing";
    try {
      await this._chain;
      if (!this.client.connected) {
        this.state = "waiting";
        const until = performance.now() + waitForServerMs;
        this.dispatchEvent(new CustomEvent("waiting", { detail: { until } }));
        await this.client.whenConnected({ timeoutMs: waitForServerMs, signal });
        this.state = "finishing";
      }
      await this._resumed; // the reconnect's resume, so that close() sends from the right seq
      const summary = await this.sender.close();
      this.state = "stopped";
      return summary;
    } catch (err) {
      this.state = "failed";
      throw err;
    } finally {
      this.client.recordings.delete(this);
    }
  }

  _fail(error) {
    this._failed = error;
    this.dispatchEvent(new CustomEvent("error", { detail: error }));
  }

  _disconnected() {
    if (!this._outage) this._outage = { acked: this.ackedChunks };
    this.sender.disconnected();
  }

  _reconnected() {
    const lost = this._outage;
    this._outage = null;
    this._resumed = this.sender.resume()
      .then(() => this.sender.drained())
      .then(() => {
        if (lost) this.dispatchEvent(new CustomEvent("reconnected", { detail: { delivered: this.ackedChunks - lost.acked } }));
      })
      .catch((err) => this._fail({ code: "resume_failed", message: `resume failed: ${err.message}` }));
  }
}
