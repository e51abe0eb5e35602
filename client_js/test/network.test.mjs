// A bad network between the client and the real stack: outages, lost acks, dead sockets.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { assertMatchesStorage, behindProxy as started, makeClient, startStack, traceTimers, until, within } from "./stack.mjs";

let stack, credsFor;
before(async () => {
  stack = await startStack({ tps: 400, ttftMs: 30 }); // short replies; the gateway's idle timeout is 2 s
  credsFor = stack.prefetch(["P-outage", "P-retry", "P-dead", "P-dead-unwatched", "P-refused", "P-cut", "P-forged"]);
});
after(() => stack?.stop());

const of = (events, type) => events.filter((e) => e.type === type);
const sends = (log) => log.filter((l) => l.dir === "out" && l.frame.action === "send");

/** A client behind its own proxy; both are closed when the test ends, whatever happened. */
const behindProxy = async (t, participant, options) => started(t, stack, await credsFor(participant), options);

test("sends made during an outage are queued, then delivered once each, in order, one at a time", async (t) => {
  const { client, events, log, proxy, creds } = await behindProxy(t, "P-outage");
  proxy.outage();
  proxy.drop();
  await until(() => client.state === "reconnecting", { what: "the client to notice the outage" });
  const texts = ["First, while offline", "Second, while offline", "Third, while offline"];
  const ids = texts.map((text) => client.send(text));
  assert.deepEqual(client.transcript.slice(-3).map((m) => [m.seq, m.text, m.client_msg_id, m.status]),
    texts.map((text, i) => [null, text, ids[i], "pending"]));
  assert.equal(client.busy, true);
  const attempts = () => of(events, "state").filter((e) => e.state === "reconnecting").length;
  const queuedAt = attempts();
  await until(() => attempts() >= queuedAt + 2, { what: "two more reconnect attempts" }); // it kept trying
  assert.equal(client.state, "reconnecting");
  assert.equal(sends(log).length, 0);

  proxy.restore();
  await until(() => client.transcript.length === 7 && !client.busy, { what: "three replies" });
  // each went once (no retry was needed), in order, each after the previous reply was stored
  assert.deepEqual(sends(log).map((l) => l.frame.client_msg_id), ids);
  for (let i = 1; i < ids.length; i++) {
    const sent = log.indexOf(sends(log)[i]);
    const previousReply = log.findIndex((l) => l.frame?.type === "message" && l.frame.seq === 2 * i + 1);
    assert.ok(previousReply >= 0 && previousReply < sent, `send ${i} waited for reply ${i - 1}`);
  }
  const messages = await assertMatchesStorage(client.transcript, creds);
  for (const text of texts) assert.equal(messages.filter((m) => m.text === text).length, 1, text);
  assert.deepEqual(messages.slice(1).map((m) => m.role), ["user", "assistant", "user", "assistant", "user", "assistant"]);
});

test("a lost answer: the reply timeout resends with the same client_msg_id on the live socket; stored once", async (t) => {
  traceTimers(t); // which timer made the resend
  const { client, events, log, proxy, creds } = await behindProxy(t, "P-retry", { replyTimeoutMs: 700 });
  let acks = 0; // the server's answers to the first send are lost (its ack, queued, deltas and message); pongs get through
  proxy.swallow((f) => {
    if (f.type === "ack") acks++;
    return acks <= 1 && ["ack", "queued", "delta", "message"].includes(f.type);
  });
  const id = client.send("Are you there?");
  const reply = await until(() => of(events, "message")[0]?.message, { what: "the reply" });

  const sent = sends(log);
  assert.equal(sent.length, 2);
  assert.ok(sent.every((l) => l.frame.client_msg_id === id && l.frame.text === "Are you there?" && l.socket === 1));
  assert.equal(sent[1].timerMs, 700, "resent by the reply timeout");
  assert.deepEqual(of(events, "ack").map((a) => [a.client_msg_id, a.seq, a.duplicate]), [[id, 2, true]]);
  assert.deepEqual(of(events, "state").map((e) => e.state), ["connecting", "open"]); // no reconnect was needed
  assert.equal(of(events, "error").length, 0);
  assert.equal(reply.seq, 3);
  const messages = await assertMatchesStorage(client.transcript, creds);
  assert.equal(messages.filter((m) => m.text === "Are you there?").length, 1);
});

test("a dead socket (a black hole) is found by the heartbeat's pong timeout and replaced; without a heartbeat it is not", async (t) => {
  traceTimers(t); // which timer noticed the dead socket
  const watched = await behindProxy(t, "P-dead", { heartbeatMs: 300, pongTimeoutMs: 400 });
  const unwatched = await behindProxy(t, "P-dead-unwatched", { heartbeatMs: 0 });
  watched.proxy.blackhole();
  unwatched.proxy.blackhole();
  await until(() => of(watched.events, "chat").length === 2, { what: "the watched client to resume" });

  const lost = of(watched.events, "state").find((e) => e.state === "reconnecting");
  assert.equal(lost.timerMs, 400, "noticed by the pong timeout");
  assert.deepEqual(of(watched.events, "state").map((e) => e.state), ["connecting", "open", "reconnecting", "open"]);
  assert.equal(watched.client.state, "open");
  watched.client.send("Still here?");
  await until(() => of(watched.events, "message").length === 1, { what: "a reply on the new socket" });
  await assertMatchesStorage(watched.client.transcript, watched.creds);

  // the same black hole: the gateway closes the idle socket (2 s), and no close ever reaches this client
  await until(() => unwatched.proxy.closedByServer === 1, { what: "the gateway to close the silent socket" });
  assert.equal(unwatched.client.state, "open");
  assert.deepEqual(of(unwatched.events, "state").map((e) => e.state), ["connecting", "open"]);
});

test("a refused send is marked failed and the queue moves on; retry() sends it again with the same client_msg_id", async (t) => {
  const { client, events, log, creds } = await behindProxy(t, "P-refused");
  const tooLong = "x".repeat(client.limits.max_chars + 1);
  const refusedId = client.send(tooLong);
  const nextId = client.send("And this one?");
  await until(() => !client.busy, { what: "the queue to drain" });

  const [refusal] = of(events, "error");
  assert.deepEqual([refusal.code, refusal.retryable, refusal.client_msg_id], ["message_too_long", false, refusedId]);
  assert.deepEqual(client.transcript.at(-1), { seq: null, role: "user", text: tooLong, client_msg_id: refusedId, status: "failed" });
  assert.deepEqual(client.transcript.slice(1, 3).map((m) => [m.seq, m.role, m.status]), [[2, "user", "stored"], [3, "assistant", "stored"]]);
  assert.equal(client.transcript[1].client_msg_id, nextId);

  assert.equal(client.retry(refusedId), true);
  await until(() => of(events, "error").length === 2 && !client.busy, { what: "the retry's answer" });
  assert.deepEqual(sends(log).map((l) => l.frame.client_msg_id), [refusedId, nextId, refusedId]);
  assert.equal(client.transcript.at(-1).status, "failed");
  await assertMatchesStorage(client.transcript.slice(0, -1), creds); // all but the refused one
});

test("a reply that breaks off is marked failed (partial text dropped); retry() generates it again, stored once", async (t) => {
  const { client, events, log, creds } = await behindProxy(t, "P-cut");
  await stack.faults([{ kind: "cut", after_tokens: 8 }]); // the model's stream breaks after 8 tokens
  const id = client.send("Tell me about primes");
  await until(() => of(events, "error").length === 1 && !client.busy, { what: "the failure" });

  const [failure] = of(events, "error");
  assert.deepEqual([failure.code, failure.retryable, failure.seq, failure.client_msg_id], ["reply_interrupted", true, 3, id]);
  assert.ok(of(events, "delta").length >= 1, "it had started streaming");
  assert.deepEqual(client.transcript.slice(1).map((m) => [m.seq, m.role, m.text === "" ? "" : "…", m.status, m.client_msg_id]),
    [[2, "user", "…", "stored", id], [3, "assistant", "", "failed", id]]);

  assert.equal(client.retry(id), true);
  assert.equal(client.busy, true);
  await until(() => of(events, "message").length === 1, { what: "the regenerated reply" });
  assert.deepEqual(sends(log).map((l) => l.frame.client_msg_id), [id, id]);
  assert.deepEqual(of(events, "ack").map((a) => a.duplicate), [false, true]);
  const messages = await assertMatchesStorage(client.transcript, creds);
  assert.equal(messages.length, 3);
});

test("start() rejects on a non-retryable error (a forged ticket), and the client stops for good", async () => {
  const creds = await credsFor("P-forged");
  const { client, events, log } = makeClient({ ...creds, ticket: creds.ticket.slice(0, -8) + "AAAAAAA=" });
  const seen = [];
  const unsubscribe = client.on("error", (detail) => seen.push(detail.code));
  const refusal = await within(client.start().then(() => null, (error) => error), "start() to settle");
  unsubscribe();
  assert.equal(refusal?.code, "invalid_ticket");
  assert.equal(refusal.retryable, false);
  assert.deepEqual(seen, ["invalid_ticket"]);
  assert.equal(client.state, "closed");
  assert.deepEqual(of(events, "state").map((e) => e.state), ["connecting", "open", "closed"]);
  // no reconnect: a closed client keeps no timer (lifecycle.test.mjs), so none can come later
  assert.equal(log.filter((l) => l.dir === "connect").length, 1);
});
