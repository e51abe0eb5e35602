// API Gateway's route throttling (the stage's per-route token buckets), against the real stack
// with a low limit: a throttled frame is answered {"message": "Too Many Requests", ...} and its
// function is not run; the client must send it again, not lose it, and not break the socket.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { assertMatchesStorage, behindProxy as started, startStack, traceTimers, until, within } from "./stack.mjs";

let stack, credsFor;
before(async () => {
  stack = await startStack({ throttling: [3, 5] }); // 3 frames/s per route, bursts of 5 (heartbeats: 2/s)
  credsFor = stack.prefetch(["P-throttled", "P-flood"]);
});
after(() => stack?.stop());

const of = (events, type) => events.filter((e) => e.type === type);
const TOO_MANY = "Too Many Requests";

/** Another participant's socket that keeps the `send` route's bucket empty until `stop()`. */
async function flood(t) {
  const creds = await credsFor("P-flood");
  const ws = new WebSocket(`${creds.url}?token=${encodeURIComponent(creds.token)}`);
  t.after(() => ws.terminate());
  await within(new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject)), "the flood's socket");
  let on = true, throttled = 0;
  const one = () => on && ws.send(JSON.stringify({ action: "send", chat_id: "c_none", client_msg_id: "x", text: "x" }));
  ws.on("message", (data) => {
    if (JSON.parse(String(data)).message === TOO_MANY) throttled++;
    one(); // a frame for each answer: every token is taken as soon as it comes
  });
  for (let i = 0; i < 10; i++) one();
  await until(() => throttled > 0, { what: "the send route's bucket to be empty" });
  return { stop: () => (on = false) };
}

test("a throttled send goes again after a backoff with the same client_msg_id, on the same socket; stored once", async (t) => {
  traceTimers(t); // which timer made the resend
  const { client, events, log, creds } = await started(t, stack, await credsFor("P-throttled"), { heartbeatMs: 1000 });
  const flooding = await flood(t);
  const id = client.send("Still there?");
  await until(() => log.some((l) => l.dir === "in" && l.frame.message === TOO_MANY), { what: "the send to be throttled" });
  flooding.stop();
  const reply = await until(() => of(events, "message")[0]?.message, { what: "the reply" });

  const sent = log.filter((l) => l.dir === "out" && l.frame.action === "send");
  assert.ok(sent.length >= 2, "sent again after the throttle");
  assert.ok(sent.every((l) => l.frame.client_msg_id === id && l.socket === 1));
  assert.ok(sent.slice(1).every((l) => l.timerMs != null && l.timerMs <= 1000), "resent after a backoff (at most backoffMaxMs), not a reply timeout");
  assert.deepEqual(of(events, "state").map((e) => e.state), ["connecting", "open"]); // the socket stayed
  assert.ok(of(events, "error").every((e) => e.code === "throttled" && e.retryable), JSON.stringify(of(events, "error")));
  assert.equal(reply.seq, 3);
  const messages = await assertMatchesStorage(client.transcript, creds);
  assert.equal(messages.filter((m) => m.text === "Still there?").length, 1);
});
