// The connection's life: heartbeat against the gateway's idle timeout, backoff, close().
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { makeClient, sleep, startProxy, startStack, until, within } from "./stack.mjs";

let stack, credsFor;
before(async () => {
  stack = await startStack({ tps: 400, ttftMs: 30, idleTimeout: 2 });
  credsFor = stack.prefetch(["P-beat", "P-nobeat", "P-backoff", "P-close", "P-close-control"]);
});
after(() => stack?.stop());

const of = (events, type) => events.filter((e) => e.type === type);
const states = (events) => of(events, "state").map((e) => e.state);

test("the heartbeat keeps an idle client past the gateway's 2 s idle timeout; without it the gateway closes the socket and the client reconnects", async (t) => {
  const [credsOn, credsOff] = await Promise.all([credsFor("P-beat"), credsFor("P-nobeat")]);
  const on = makeClient(credsOn, { heartbeatMs: 500 });
  const off = makeClient(credsOff, { heartbeatMs: 0 });
  t.after(() => {
    on.client.close();
    off.client.close();
  });
  await within(Promise.all([on.client.start(), off.client.start()]), 10000, "start()");
  await sleep(5000);

  assert.equal(on.client.state, "open");
  assert.deepEqual(states(on.events), ["connecting", "open"]); // no reconnect happened
  assert.equal(on.sockets(), 1);
  assert.ok(on.log.filter((l) => l.dir === "out" && l.frame.action === "ping").length >= 8);
  assert.ok(on.log.filter((l) => l.dir === "in" && l.frame.type === "pong").length >= 8);

  const closed = off.log.find((l) => l.dir === "close");
  assert.equal(closed?.code, 1001, "the gateway closed the idle socket (Going Away)");
  const opened = off.log.find((l) => l.dir === "connect").at;
  assert.ok(closed.at - opened >= 1800, `closed after ${closed.at - opened} ms`);
  assert.ok(states(off.events).slice(0, 4).join() === "connecting,open,reconnecting,open");
  await until(() => off.client.state === "open", { what: "the reconnected socket" });
  assert.ok(of(off.events, "chat").length >= 2, "resumed after the reconnect");
});

test("during an outage the reconnect delays grow, with full jitter; a stable connection resets them, a short one does not", async (t) => {
  const creds = await credsFor("P-backoff");
  const proxy = await startProxy(stack.port);
  const base = 50;
  const max = 800;
  const { client, events, log } = makeClient({ ...creds, url: proxy.url },
    { backoffBaseMs: base, backoffMaxMs: max, stableAfterMs: 400 });
  t.after(async () => {
    client.close();
    await proxy.close();
  });
  await within(client.start(), 10000, "start()");
  const reconnecting = () => of(events, "state").filter((e) => e.state === "reconnecting");

  proxy.outage();
  proxy.drop();
  await until(() => reconnecting().length >= 9, { timeoutMs: 10000, what: "nine reconnect attempts" });
  const tries = reconnecting().slice(0, 9);
  assert.deepEqual(tries.map((e) => e.attempt), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  for (const { attempt, delayMs } of tries) {
    const cap = Math.min(max, base * 2 ** (attempt - 1));
    assert.ok(delayMs >= 0 && delayMs <= cap, `attempt ${attempt}: ${delayMs} ms over its cap ${cap}`);
  }
  const delays = tries.map((e) => e.delayMs);
  assert.ok(new Set(delays).size >= 7, `not jittered: ${delays}`);
  assert.ok(Math.max(...delays.slice(4)) > 2 * base, `not growing: ${delays}`); // (1/8)^5 odds of a false alarm
  // each delay was waited for: the next connection attempt came no sooner
  const connects = log.filter((l) => l.dir === "connect").map((l) => l.at);
  tries.slice(0, 8).forEach((e, i) => assert.ok(connects[i + 1] >= e.at + e.delayMs - 5, `attempt ${i + 1} came early`));

  proxy.restore();
  await until(() => client.state === "open", { timeoutMs: 5000, what: "the end of the outage" });
  const attempts = reconnecting().length;
  proxy.drop(); // at once: the connection was not stable, the backoff goes on
  await until(() => reconnecting().length > attempts, { what: "the next reconnect" });
  assert.equal(reconnecting().at(-1).attempt, attempts + 1);
  await until(() => client.state === "open", { timeoutMs: 5000, what: "the reconnect" });
  await sleep(600); // past stableAfterMs
  proxy.drop();
  await until(() => reconnecting().length > attempts + 1, { what: "the next reconnect" });
  const reset = reconnecting().at(-1);
  assert.equal(reset.attempt, 1);
  assert.ok(reset.delayMs <= base);
  await until(() => client.state === "open", { timeoutMs: 5000, what: "the reconnect" });
});

// A child node process: close() must leave nothing behind (no timer, no socket) so that it exits.
const CHILD = `
import net from "node:net";
import WebSocket from "ws";
import { ChatClient } from ${JSON.stringify(new URL("../chat-client.js", import.meta.url).href)};
const [creds, closeThem] = JSON.parse(process.argv[1]);
const accepted = new Set();
const silent = net.createServer((socket) => accepted.add(socket)).listen(0, "127.0.0.1"); // never answers a handshake
await new Promise((resolve) => silent.once("listening", resolve));
const refused = net.createServer().listen(0, "127.0.0.1");
await new Promise((resolve) => refused.once("listening", resolve));
const refusedPort = refused.address().port;
await new Promise((resolve) => refused.close(resolve)); // nothing listens there any more
const make = (url) => new ChatClient({ ...creds, url, WebSocket });
const streaming = make(creds.url), reconnecting = make("ws://127.0.0.1:" + refusedPort + "/local"),
  connecting = make("ws://127.0.0.1:" + silent.address().port + "/local");
reconnecting.start().catch(() => {});
connecting.start().catch(() => {});
await streaming.start();
await new Promise((resolve) => setTimeout(resolve, 300));
streaming.send("Tell me a long story");
await new Promise((resolve) => streaming.addEventListener("delta", resolve, { once: true }));
const before = [streaming.state, reconnecting.state, connecting.state, streaming.busy];
const late = [];
for (const client of [streaming, reconnecting, connecting]) {
  client.addEventListener("state", (e) => late.push(e.detail.state));
  if (closeThem) client.close();
}
silent.close();
if (closeThem) for (const socket of accepted) socket.destroy();
console.log(JSON.stringify({ before, after: [streaming.state, reconnecting.state, connecting.state], late }));
`;

function runChild(creds, closeThem) {
  const child = spawn(process.execPath, ["--input-type=module", "-e", CHILD, JSON.stringify([creds, closeThem])], {
    cwd: fileURLToPath(new URL("..", import.meta.url)), stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let printedAt = null;
  child.stdout.on("data", (chunk) => {
    out += chunk;
    printedAt ??= Date.now();
  });
  child.stderr.on("data", (chunk) => (out += chunk));
  const exited = new Promise((resolve) => child.once("exit", () => resolve(Date.now())));
  return { child, exited, output: () => out, printedAt: () => printedAt };
}

test("close() stops everything: no reconnect, no timer left, the process exits at once", async (t) => {
  const closing = runChild(await credsFor("P-close"), true);
  // the same clients, not closed: their timers keep the process alive. (A participant of its own: with
  // two pages sending in one chat at once, the one refused with reply_in_progress asks `history`, which
  // binds the chat to its socket, and under load the other page's reply can stream there instead.)
  const control = runChild(await credsFor("P-close-control"), false);
  t.after(() => {
    closing.child.kill();
    control.child.kill();
  });

  const exitedAt = await within(closing.exited, 15000, "the child to exit");
  assert.equal(closing.child.exitCode, 0, closing.output());
  const report = JSON.parse(closing.output());
  assert.deepEqual(report.before, ["open", "reconnecting", "connecting", true]); // mid-reply, backing off, in a handshake
  assert.deepEqual(report.after, ["closed", "closed", "closed"]);
  assert.deepEqual(report.late, ["closed", "closed", "closed"]); // one "closed" each, nothing after
  assert.ok(exitedAt - closing.printedAt() < 1000, `exited ${exitedAt - closing.printedAt()} ms after close()`);

  await until(() => control.printedAt(), { timeoutMs: 15000, what: "the control child" });
  await sleep(1000);
  assert.equal(control.child.exitCode, null, "without close(), the client keeps the process alive (the check has teeth)");
});
