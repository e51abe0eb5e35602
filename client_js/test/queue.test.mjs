// Replies that wait in the service's reply queue (LlmConcurrency), the reply timeout that asks
// instead of resending, and `queued` frames out of order: the real stack, every reply job
// delivered twice (as SQS may), real sockets.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { assertMatchesStorage, behindProxy as started, startStack, until } from "./stack.mjs";

const CROWD = ["P-q1", "P-q2", "P-q3", "P-q4", "P-q5", "P-q6"];
let stack, credsFor;
before(async () => {
  // two replies at a time, each streaming for about four seconds: a burst queues
  stack = await startStack({ tps: 20, ttftMs: 50, llmConcurrency: 2, duplicateDeliveries: 1 });
  credsFor = stack.prefetch([...CROWD, "P-patience", "P-lost-error", "P-lost-ack", "P-late-queued"]);
});
after(() => stack?.stop());

const of = (events, type) => events.filter((e) => e.type === type);
const out = (log, action) => log.filter((l) => l.dir === "out" && l.frame.action === action);
const firstIn = (log, type) => log.findIndex((l) => l.dir === "in" && l.frame.type === type);
/** The statuses the transcript gave reply `seq`, each change once, in order. */
const statusesOf = (events, seq) => of(events, "transcript").map((e) => e.transcript.find((m) => m.seq === seq)?.status)
  .filter((s, i, all) => s && s !== all[i - 1]);

/** A client behind its own proxy; both are closed when the test ends, whatever happened. */
const behindProxy = async (t, participant, options) => started(t, stack, await credsFor(participant), options);

test("a burst: replies wait in the queue past replyTimeoutMs; the clients ask instead of resending, show queued, and get their replies", async (t) => {
  const crowd = await Promise.all(CROWD.map((name) => behindProxy(t, name, { replyTimeoutMs: 1000 })));
  const ids = crowd.map(({ client }, i) => client.send(`Pizza party number ${i + 1} tonight`)); // all at once
  await until(() => crowd.every(({ client }) => client.transcript.length === 3 && !client.busy),
    { what: "six replies, two at a time" });

  for (const [i, { client, events, log, creds }] of crowd.entries()) {
    assert.deepEqual(out(log, "send").map((l) => l.frame.client_msg_id), [ids[i]], `${CROWD[i]} sent once`);
    assert.deepEqual(of(events, "ack").map((a) => [a.client_msg_id, a.seq, a.duplicate]), [[ids[i], 2, false]]);
    assert.deepEqual(of(events, "error"), []);
    assert.deepEqual(of(events, "message").map((m) => m.message.seq), [3]);
    const messages = await assertMatchesStorage(client.transcript, creds);
    assert.deepEqual(messages.map((m) => m.role), ["assistant", "user", "assistant"]);
  }
  // Only two replies are written at once: the others waited in the queue for at least one whole
  // reply (about four seconds), so their reply timer (one second) fired, and they asked.
  const waited = crowd.filter(({ log }) => out(log, "history").length > 0);
  assert.ok(waited.length >= 2, `only ${waited.length} clients waited`);
  for (const { client, events, log } of waited) {
    const id = client.transcript[1].client_msg_id;
    assert.deepEqual(of(events, "queued").map((q) => [q.seq, q.client_msg_id]), [[3, id]]);
    assert.deepEqual(statusesOf(events, 3), ["queued", "streaming", "stored"]);
    const shown = of(events, "transcript").map((e) => e.transcript.at(-1)).find((m) => m.status === "queued");
    assert.deepEqual(shown, { seq: 3, role: "assistant", text: "", status: "queued", client_msg_id: id });
    // it asked while the reply was queued (after `queued`, before the first delta), from the user message on
    const asked = out(log, "history");
    assert.ok(asked.every((l) => l.frame.after_seq === 1 && log.indexOf(l) > firstIn(log, "queued")));
    assert.ok(log.indexOf(asked[0]) < firstIn(log, "delta"));
    const answers = log.filter((l) => l.dir === "in" && l.frame.type === "history");
    assert.ok(answers.length > 0 && answers.every((l) => l.frame.replying === 3 || l.frame.messages.some((m) => m.seq === 3)));
  }
});

test("a reply awaited longer than replyMaxWaitMs fails with a retryable reply_timeout, never resent; retry() then brings it", async (t) => {
  // (questions every second: the service allows 20 frames per 10 s on a socket)
  const { client, events, log, creds } = await behindProxy(t, "P-patience", { replyTimeoutMs: 1000, replyMaxWaitMs: 3000 });
  await stack.faults([{ kind: "stall", after_tokens: 0, seconds: 10 }]); // the reply is being written, silently
  const id = client.send("Are you still thinking?");
  await until(() => of(events, "error").length > 0, { what: "the client to give up" });

  const [failure] = of(events, "error");
  assert.deepEqual([failure.code, failure.retryable, failure.seq, failure.client_msg_id], ["reply_timeout", true, 3, id]);
  assert.equal(out(log, "send").length, 1); // acked: asked, never resent
  const asked = out(log, "history");
  assert.equal(asked.length, 2); // three timeouts: two questions, then it gave up
  assert.ok(log.filter((l) => l.dir === "in" && l.frame.type === "history").every((l) => l.frame.replying === 3));
  assert.deepEqual(client.transcript.slice(1).map((m) => [m.seq, m.role, m.status, m.client_msg_id]),
    [[2, "user", "stored", id], [3, "assistant", "failed", id]]);
  assert.equal(client.busy, false);

  // the participant presses Retry (and this time the client waits as long as it takes)
  client.options.replyMaxWaitMs = 60000;
  assert.equal(client.retry(id), true);
  assert.equal(client.busy, true);
  await until(() => of(events, "message").length === 1, { what: "the reply" });
  assert.deepEqual(out(log, "send").map((l) => l.frame.client_msg_id), [id, id]);
  assert.deepEqual(of(events, "ack").map((a) => a.duplicate), [false, true]);
  await assertMatchesStorage(client.transcript, creds);
});

test("no one is writing an acked reply (it broke off and the error was lost): the answer to the question makes the client resend", async (t) => {
  const { client, events, log, proxy, creds } = await behindProxy(t, "P-lost-error", { replyTimeoutMs: 500 });
  await stack.faults([{ kind: "cut", after_tokens: 4 }]);
  proxy.swallow((f) => f.type === "error"); // the reply_interrupted never arrives
  const id = client.send("Tell me about primes");
  await until(() => of(events, "message").length === 1, { what: "the regenerated reply" });

  assert.deepEqual(out(log, "send").map((l) => l.frame.client_msg_id), [id, id]);
  const resent = log.indexOf(out(log, "send")[1]);
  const answer = log.findLastIndex((l, i) => i < resent && l.dir === "in" && l.frame.type === "history");
  assert.ok(answer >= 0 && log[answer].frame.replying === null, "resent after the server said no one was writing it");
  assert.deepEqual(of(events, "ack").map((a) => a.duplicate), [false, true]);
  assert.deepEqual(of(events, "error"), []);
  // queued, its partial text, then (dropped at the answer, resent) queued again and the whole reply
  assert.deepEqual(statusesOf(events, 3), ["queued", "streaming", "queued", "streaming", "stored"]);
  const messages = await assertMatchesStorage(client.transcript, creds);
  assert.equal(messages.filter((m) => m.role === "user").length, 1);
});

test("a lost ack: the queued frame says the message is stored (as the reply's seq - 1), so it is not sent again", async (t) => {
  const { client, events, log, proxy, creds } = await behindProxy(t, "P-lost-ack", { replyTimeoutMs: 1000 });
  let queued = false; // the ack is lost; the reply's frames wait for the queued frame (its usual order)
  const held = [];
  proxy.rewrite((f) => {
    if (f.type === "ack") return [];
    if (f.type === "queued") {
      queued = true;
      return [f, ...held.splice(0)];
    }
    if (queued || !["delta", "message"].includes(f.type)) return null;
    held.push(f);
    return [];
  });
  const id = client.send("Did you get this?");
  await until(() => of(events, "message").length === 1 && !client.busy, { what: "the reply" });

  assert.deepEqual(out(log, "send").map((l) => l.frame.client_msg_id), [id]);
  assert.deepEqual(of(events, "ack"), []);
  assert.deepEqual(of(events, "queued").map((q) => [q.seq, q.client_msg_id]), [[3, id]]);
  assert.equal(client.transcript[1].client_msg_id, id);
  await assertMatchesStorage(client.transcript, creds);
});

test("a queued frame that arrives after the reply's first delta, or after its message, is ignored; one on time is shown", async (t) => {
  const { client, events, log, proxy, creds } = await behindProxy(t, "P-late-queued");
  let hold = null; // {types, release}: the proxy holds frames of these types until one of type `release` passes
  const held = [];
  proxy.rewrite((f) => {
    if (!hold) return null;
    if (hold.types.includes(f.type)) {
      held.push(f);
      return [];
    }
    if (f.type !== hold.release) return null;
    hold = null;
    return [f, ...held.splice(0)];
  });
  const reply = async (text, types, release, n) => {
    hold = { types, release };
    client.send(text);
    await until(() => of(events, "message").length === n && !client.busy, { what: `reply ${n}` });
  };
  await reply("First question", ["queued"], "delta", 1);
  await reply("Second question", ["queued"], "message", 2);
  await reply("Third question", ["delta", "message"], "queued", 3); // on time: before anything else about the reply

  const queued = log.filter((l) => l.dir === "in" && l.frame.type === "queued");
  assert.deepEqual(queued.map((l) => l.frame.seq), [3, 5, 7]);
  assert.ok(log.indexOf(queued[0]) > firstIn(log, "delta"), "the first came after a delta");
  assert.ok(log.indexOf(queued[1]) > log.findIndex((l) => l.dir === "in" && l.frame.type === "message" && l.frame.seq === 5));
  assert.deepEqual(of(events, "queued").map((q) => q.seq), [7]);
  assert.deepEqual(statusesOf(events, 3), ["streaming", "stored"]);
  assert.deepEqual(statusesOf(events, 5), ["streaming", "stored"]);
  assert.deepEqual(statusesOf(events, 7), ["queued", "streaming", "stored"]);
  await assertMatchesStorage(client.transcript, creds);
});
