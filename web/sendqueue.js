// Chunk send queue: ordered, acknowledged, bounded, resumable. No DOM, no socket: the page
// passes an `emit(event, payload) -> Promise<ack>` so node's test runner can drive it.
//
// Rules (PROTOCOL.md): a chunk is acknowledged when an ack says it is stored, and forgotten
// when an ack's `durable_seq` (v1.2: what reached the server's store of record, object storage
// on a cluster) covers it; `gap` means "resend from next_seq"; after a reconnect the session is
// resumed with `start {resume}` and everything from the server's next_seq on is sent again
// (below an acknowledged seq when the node that acknowledged it was lost with its disk: the
// kept chunks are resent). Nothing unacknowledged is dropped; when the bound is reached by
// acknowledged chunks still waiting for durable_seq, the oldest of those are let go (counted).

export class SendQueueFull extends Error {}

export class ChunkSender {
  /**
   * @param {object} o
   * @param {(event: string, payload: object, timeoutMs: number) => Promise<object>} o.emit
   * @param {number} [o.maxChunks=240] chunks kept at most, unacknowledged or not yet durable (60 s at 250 ms)
   * @param {number} [o.maxBytes=64 MiB] bytes kept at most
   * @param {number} [o.window=4] chunks in flight at once
   * @param {number} [o.ackTimeoutMs=15000]
   * @param {(s: object) => void} [o.onChange]
   */
  constructor({ emit, maxChunks = 240, maxBytes = 64 * 1024 * 1024, window = 4, ackTimeoutMs = 15000, onChange = () => {} }) {
    this.emit = emit;
    this.maxChunks = maxChunks;
    this.maxBytes = maxBytes;
    this.window = window;
    this.ackTimeoutMs = ackTimeoutMs;
    this.onChange = onChange;
    this.session = null; // {session_id, token}
    this.queue = []; // [{seq, data, tMs, inFlight}]
    this.nextSeq = 0; // seq the next enqueued chunk gets
    this.ackedSeq = -1; // highest seq known stored
    this.durableSeq = -1; // highest seq known in the store of record
    this.unreplicatedDropped = 0; // acknowledged chunks let go before durable_seq covered them
    this.ackedChunks = 0;
    this.bytesSent = 0;
    this.queuedBytes = 0;
    this.connected = false;
    this.fatal = null;
    this.retryDelayMs = 250;
    this._retryTimer = null;
  }

  /** Chunks not acknowledged yet. */
  get pending() {
    return this.queue.filter((i) => !i.acked).length;
  }

  /** Acknowledged chunks kept until durable_seq covers them. */
  get unreplicated() {
    return this.queue.filter((i) => i.acked).length;
  }

  async open(mime, meta = {}) {
    const ack = await this.emit("start", { mime, meta }, this.ackTimeoutMs);
    if (!ack.ok) throw new Error(`${ack.error.code}: ${ack.error.message}`);
    this.session = { session_id: ack.session_id, token: ack.token };
    this.connected = true;
    this._changed();
    return ack;
  }

  /** Queue a chunk (ArrayBuffer/Uint8Array/Blob) in recorder order. Throws SendQueueFull. */
  push(data, tMs) {
    const size = data.byteLength ?? data.size ?? 0;
    const full = () => this.queue.length >= this.maxChunks || this.queuedBytes + size > this.maxBytes;
    while (full() && this.queue.length && this.queue[0].acked) this._forget(); // durable_seq lags: current data first
    if (full()) {
      throw new SendQueueFull(`${this.pending} chunks (${this.queuedBytes} bytes) wait for acks; the server is unreachable`);
    }
    this.queue.push({ seq: this.nextSeq++, data, size, tMs, inFlight: false, acked: false });
    this.queuedBytes += size;
    this._changed();
    this.pump();
  }

  /** Transport went away: in-flight chunks will be resent after resume. */
  disconnected() {
    this.connected = false;
    for (const item of this.queue) item.inFlight = false;
    this._changed();
  }

  /** Transport is back: reattach the session and resend from the server's next_seq. */
  async resume() {
    if (!this.session) return;
    const ack = await this.emit("start", { resume: this.session }, this.ackTimeoutMs);
    if (!ack.ok) {
      this._fail(ack.error);
      return;
    }
    this.connected = true;
    this._storedBelow(ack.next_seq);
    this._durable(ack.durable_seq ?? ack.next_seq - 1);
    for (const item of this.queue) {
      item.inFlight = false;
      if (item.seq >= ack.next_seq) item.acked = false; // acknowledged by a node lost since: resent
    }
    this._changed();
    this.pump();
  }

  pump() {
    if (!this.connected || !this.session || this.fatal) return;
    let inFlight = this.queue.filter((i) => i.inFlight).length;
    for (const item of this.queue) {
      if (inFlight >= this.window) break;
      if (item.inFlight || item.acked) continue;
      item.inFlight = true;
      inFlight += 1;
      this._send(item);
    }
  }

  async _send(item) {
    const payload = { ...this.session, seq: item.seq, data: item.data, t_ms: item.tMs };
    let ack;
    try {
      ack = await this.emit("chunk", payload, this.ackTimeoutMs);
    } catch (err) {
      ack = { ok: false, error: { code: "timeout", message: String(err) } };
    }
    if (ack.ok) {
      if (!item.counted) this.bytesSent += item.size;
      item.counted = true;
      this._storedBelow(ack.next_seq ?? item.seq + 1);
      this._durable(ack.durable_seq ?? item.seq);
      this.retryDelayMs = 250;
    } else if (ack.error.code === "gap") {
      this._storedBelow(ack.next_seq);
      for (const i of this.queue) {
        i.inFlight = false;
        if (i.seq >= ack.next_seq) i.acked = false; // the server lacks it (a node lost): resent
      }
    } else if (["timeout", "internal"].includes(ack.error.code)) {
      item.inFlight = false;
      this._retryLater();
      return;
    } else {
      this._fail(ack.error);
      return;
    }
    this._changed();
    this.pump();
  }

  /** The server has every seq below `nextSeq`: those chunks are acknowledged (kept until durable). */
  _storedBelow(nextSeq) {
    for (const item of this.queue) {
      if (item.seq >= nextSeq) break;
      if (!item.acked) {
        item.acked = true;
        item.inFlight = false;
        if (!item.everAcked) this.ackedChunks += 1;
        item.everAcked = true;
      }
    }
    this.ackedSeq = Math.max(this.ackedSeq, nextSeq - 1);
  }

  /** The server's store of record has every seq through `durableSeq`: forget those chunks. */
  _durable(durableSeq) {
    this.durableSeq = Math.max(this.durableSeq, durableSeq);
    while (this.queue.length && this.queue[0].acked && this.queue[0].seq <= this.durableSeq) this._forget(false);
  }

  _forget(early = true) {
    const done = this.queue.shift();
    this.queuedBytes -= done.size;
    if (early) this.unreplicatedDropped += 1;
  }

  _retryLater() {
    if (this._retryTimer) return;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this.pump();
    }, this.retryDelayMs);
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, 5000);
  }

  _fail(error) {
    this.fatal = error;
    this._changed();
  }

  /** Resolves when every queued chunk is acknowledged (or rejects on a fatal error). */
  async drained(timeoutMs = 60000) {
    const until = Date.now() + timeoutMs;
    while (this.pending) {
      if (this.fatal) throw new Error(`${this.fatal.code}: ${this.fatal.message}`);
      if (Date.now() > until) throw new Error(`${this.pending} chunks still unacknowledged`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async close() {
    await this.drained();
    const ack = await this.emit("stop", this.session, this.ackTimeoutMs);
    if (!ack.ok) throw new Error(`${ack.error.code}: ${ack.error.message}`);
    this._durable(ack.session?.durable_seq ?? this.ackedSeq);
    return ack.session;
  }

  _changed() {
    this.onChange(this);
  }
}
