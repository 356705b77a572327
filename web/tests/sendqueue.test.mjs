// node --test web/tests/ : the send queue against an in-memory model of the PROTOCOL.md rules.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChunkSender, SendQueueFull } from "../sendqueue.js";

/** In-memory server following PROTOCOL.md's chunk rules; `online=false` loses messages. */
class ModelServer {
  constructor() {
    this.stored = [];
    this.online = true;
    this.loseAcksFor = new Set(); // store, but the ack never arrives
    this.dropBefore = new Set(); // lost before reaching the server
  }
  async emit(event, p) {
    await new Promise((r) => setTimeout(r, 1));
    if (!this.online) throw new Error("disconnected");
    if (event === "start") {
      if (p.resume) return { ok: true, ...p.resume, next_seq: this.stored.length };
      return { ok: true, session_id: "s1", token: "t", next_seq: 0 };
    }
    if (event === "stop") return { ok: true, session: { chunks: this.stored.length } };
    if (this.dropBefore.delete(p.seq)) throw new Error("timeout");
    let ack;
    if (p.seq < this.stored.length) {
      ack = this.stored[p.seq] === p.data ? { ok: true, seq: p.seq, next_seq: this.stored.length }
        : { ok: false, error: { code: "conflict", message: "different bytes" } };
    } else if (p.seq > this.stored.length) {
      ack = { ok: false, error: { code: "gap", message: "gap" }, next_seq: this.stored.length };
    } else {
      this.stored.push(p.data);
      ack = { ok: true, seq: p.seq, next_seq: this.stored.length };
    }
    if (this.loseAcksFor.delete(p.seq)) throw new Error("ack lost");
    return ack;
  }
}

const chunk = (i) => ({ byteLength: 10, id: `chunk-${i}` });

test("chunks arrive once, in order, and are forgotten when acked", async () => {
  const server = new ModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p) });
  await sender.open("video/webm");
  const sent = Array.from({ length: 20 }, (_, i) => chunk(i));
  sent.forEach((c, i) => sender.push(c, i * 250));
  await sender.drained(5000);
  assert.deepEqual(server.stored, sent);
  assert.equal(sender.ackedChunks, 20);
  assert.equal(sender.bytesSent, 200);
  assert.equal(sender.pending, 0);
  assert.deepEqual(await sender.close(), { chunks: 20 });
});

test("a lost ack and a lost chunk are resent without duplicates", async () => {
  const server = new ModelServer();
  server.loseAcksFor.add(3);
  server.dropBefore.add(5);
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p), window: 2 });
  await sender.open("video/webm");
  const sent = Array.from({ length: 10 }, (_, i) => chunk(i));
  sent.forEach((c) => sender.push(c, 0));
  await sender.drained(10000);
  assert.deepEqual(server.stored, sent);
});

test("reconnect: resume from the server's next_seq, nothing lost or stored twice", async () => {
  const server = new ModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p) });
  await sender.open("video/webm");
  const sent = Array.from({ length: 30 }, (_, i) => chunk(i));
  sent.slice(0, 12).forEach((c) => sender.push(c, 0));
  await new Promise((r) => setTimeout(r, 5));
  server.online = false; // the transport drops mid-flight
  sender.disconnected();
  sent.slice(12, 20).forEach((c) => sender.push(c, 0)); // the recorder keeps producing
  await new Promise((r) => setTimeout(r, 20));
  server.online = true;
  await sender.resume();
  sent.slice(20).forEach((c) => sender.push(c, 0));
  await sender.drained(10000);
  assert.deepEqual(server.stored, sent);
  assert.equal(sender.ackedChunks, 30);
});

test("gap makes the sender resend from next_seq", async () => {
  const server = new ModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p) });
  await sender.open("video/webm");
  server.stored.push(chunk(0)); // the server has seq 0 already (e.g. from an earlier tab)
  sender.nextSeq = 0;
  const sent = [chunk(0), chunk(1), chunk(2)];
  server.stored[0] = sent[0];
  sent.forEach((c) => sender.push(c, 0));
  await sender.drained(5000);
  assert.deepEqual(server.stored, sent);
});

test("the queue is bounded: a long outage fails loudly instead of growing", async () => {
  const server = new ModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p), maxChunks: 5 });
  await sender.open("video/webm");
  server.online = false;
  sender.disconnected();
  for (let i = 0; i < 5; i++) sender.push(chunk(i), 0);
  assert.throws(() => sender.push(chunk(5), 0), SendQueueFull);
  assert.equal(sender.pending, 5);
});

test("a conflict is fatal and reported", async () => {
  const server = new ModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p) });
  await sender.open("video/webm");
  server.stored.push({ byteLength: 10, id: "other" });
  sender.push(chunk(0), 0);
  await assert.rejects(sender.drained(2000), /conflict/);
});

/** A cluster's node: what it acknowledges reaches object storage (durable_seq) later. */
class DurableModelServer extends ModelServer {
  constructor() {
    super();
    this.durable = -1; // what survives losing the node
  }
  async emit(event, p) {
    const ack = await super.emit(event, p);
    if (ack && ack.ok && event !== "stop") ack.durable_seq = this.durable;
    if (ack && ack.ok && event === "stop") ack.session.durable_seq = this.stored.length - 1;
    return ack;
  }
  loseNode() { // a node lost with its disk: its successor has what was durable
    this.stored = this.stored.slice(0, this.durable + 1);
  }
}

test("chunks are kept until durable_seq covers them and resent when the node was lost", async () => {
  const server = new DurableModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p) });
  await sender.open("video/webm");
  const sent = Array.from({ length: 20 }, (_, i) => chunk(i));
  sent.slice(0, 12).forEach((c) => sender.push(c, 0));
  await sender.drained(5000);
  assert.equal(sender.pending, 0);
  assert.equal(sender.unreplicated, 12); // acknowledged, none durable yet
  server.durable = 4; // segment 0-4 uploaded; the next ack says so
  sent.slice(12, 13).forEach((c) => sender.push(c, 0));
  await sender.drained(5000);
  assert.equal(sender.durableSeq, 4);
  assert.equal(sender.unreplicated, 8); // 5..12
  server.online = false;
  sender.disconnected();
  server.loseNode();
  server.online = true;
  await sender.resume(); // next_seq 5 on the new node: 5..12 resent from memory
  sent.slice(13).forEach((c) => sender.push(c, 0));
  await sender.drained(10000);
  assert.deepEqual(server.stored, sent);
  assert.equal(sender.ackedChunks, 20); // each counted once, resent or not
  assert.equal(sender.bytesSent, 200);
  assert.deepEqual(await sender.close(), { chunks: 20, durable_seq: 19 });
  assert.equal(sender.unreplicated, 0);
});

test("durable_seq lagging never blocks recording: the oldest acknowledged chunks are let go", async () => {
  const server = new DurableModelServer();
  const sender = new ChunkSender({ emit: (e, p) => server.emit(e, p), maxChunks: 5 });
  await sender.open("video/webm");
  for (let i = 0; i < 12; i++) {
    sender.push(chunk(i), 0);
    await sender.drained(5000);
  }
  assert.equal(sender.pending, 0);
  assert.equal(sender.unreplicated, 5);
  assert.equal(sender.unreplicatedDropped, 7);
  assert.equal(server.stored.length, 12);
});
