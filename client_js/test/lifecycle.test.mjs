// The connection's life: heartbeat against the gateway's idle timeout, backoff, close().
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { makeClient, startProxy, startStack, traceTimers, until, within } from "./stack.mjs";

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
  await within(Promise.all([on.client.start(), off.client.start()]), "start()");
  const pongs = () => on.log.filter((l) => l.dir === "in" && l.frame.type === "pong").length;
  // the gateway closes the silent socket; the beating one, opened at the same time, outlives it
  await until(() => off.log.some((l) => l.dir === "close"), { what: "the gateway to close the idle socket" });
  const pongsBefore = pongs();
  await until(() => pongs() > pongsBefore + 1, { what: "two more heartbeats" });

  assert.equal(on.client.state, "open");
  assert.deepEqual(states(on.events), ["connecting", "open"]); // no reconnect happened
  assert.equal(on.sockets(), 1);

  const closed = off.log.find((l) => l.dir === "close");
  assert.equal(closed?.code, 1001, "the gateway closed the idle socket (Going Away)");
  // idle indeed: nothing went out on it after `start`
  assert.deepEqual(off.log.filter((l) => l.socket === 1 && l.dir === "out").map((l) => l.frame.action), ["start"]);
  await until(() => off.client.state === "open" && of(off.events, "chat").length >= 2, { what: "the resumed socket" });
  assert.ok(states(off.events).slice(0, 4).join() === "connecting,open,reconnecting,open");
});

test("during an outage the reconnect delays grow, with full jitter; a stable connection resets them, a short one does not", async (t) => {
  const creds = await credsFor("P-backoff");
  const proxy = await startProxy(stack.port);
  const base = 50;
  const max = 800;
  traceTimers(t); // which timer made each reconnect
  // stable after 400 ms, before its first heartbeat (500 ms): a ping on a socket says it became stable
  const { client, events, log, sockets } = makeClient({ ...creds, url: proxy.url },
    { backoffBaseMs: base, backoffMaxMs: max, stableAfterMs: 400, heartbeatMs: 500 });
  t.after(async () => {
    client.close();
    await proxy.close();
  });
  await within(client.start(), "start()");
  const reconnecting = () => of(events, "state").filter((e) => e.state === "reconnecting");

  proxy.outage();
  proxy.drop();
  await until(() => reconnecting().length >= 9, { what: "nine reconnect attempts" });
  const tries = reconnecting().slice(0, 9);
  assert.deepEqual(tries.map((e) => e.attempt), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  for (const { attempt, delayMs } of tries) {
    const cap = Math.min(max, base * 2 ** (attempt - 1));
    assert.ok(delayMs >= 0 && delayMs <= cap, `attempt ${attempt}: ${delayMs} ms over its cap ${cap}`);
  }
  const delays = tries.map((e) => e.delayMs);
  assert.ok(new Set(delays).size >= 7, `not jittered: ${delays}`);
  assert.ok(Math.max(...delays.slice(4)) > 2 * base, `not growing: ${delays}`); // (1/8)^5 odds of a false alarm
  // each delay was waited for: the next connection attempt was made by a timer set for that delay
  const connects = log.filter((l) => l.dir === "connect");
  assert.deepEqual(connects.slice(1, 9).map((l) => l.timerMs), tries.slice(0, 8).map((e) => e.delayMs));

  proxy.restore();
  await until(() => client.state === "open", { what: "the end of the outage" });
  const attempts = reconnecting().length;
  proxy.drop(); // at once: the connection was not stable, the backoff goes on
  await until(() => reconnecting().length > attempts, { what: "the next reconnect" });
  assert.equal(reconnecting().at(-1).attempt, attempts + 1);
  await until(() => client.state === "open", { what: "the reconnect" });
  const socket = sockets();
  await until(() => log.some((l) => l.socket === socket && l.dir === "out" && l.frame.action === "ping"),
    { what: "the connection to become stable" });
  proxy.drop();
  await until(() => reconnecting().length > attempts + 1, { what: "the next reconnect" });
  const reset = reconnecting().at(-1);
  assert.equal(reset.attempt, 1);
  assert.ok(reset.delayMs <= base);
  await until(() => client.state === "open", { what: "the reconnect" });
});

// A child node process: close() must leave nothing behind (no timer, no socket) so that it exits.
// It reports the clients' states and, once their sockets have closed, how many timers are left.
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
const sockets = []; // every socket the clients opened
class Tracked extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets.push(this);
  }
}
// a hanging handshake is given up after pongTimeoutMs: far longer than a busy machine takes to get here
const make = (url) => new ChatClient({ ...creds, url, WebSocket: Tracked, pongTimeoutMs: 600000 });
const streaming = make(creds.url), reconnecting = make("ws://127.0.0.1:" + refusedPort + "/local"),
  connecting = make("ws://127.0.0.1:" + silent.address().port + "/local");
reconnecting.start().catch(() => {});
connecting.start().catch(() => {});
await streaming.start();
while (reconnecting.state !== "reconnecting" || accepted.size === 0) await new Promise((resolve) => setTimeout(resolve, 10));
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
const after = [streaming.state, reconnecting.state, connecting.state];
if (closeThem) {
  await Promise.all(sockets.map((ws) => ws.readyState === WebSocket.CLOSED || new Promise((resolve) => ws.once("close", resolve))));
}
const timers = process.getActiveResourcesInfo().filter((resource) => resource === "Timeout").length;
console.log(JSON.stringify({ before, after, late, timers }));
`;

function runChild(creds, closeThem) {
  const child = spawn(process.execPath, ["--input-type=module", "-e", CHILD, JSON.stringify([creds, closeThem])], {
    cwd: fileURLToPath(new URL("..", import.meta.url)), stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let printed = "";
  child.stdout.on("data", (chunk) => {
    out += chunk;
    printed += chunk;
  });
  child.stderr.on("data", (chunk) => (out += chunk));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return { child, exited, output: () => out, report: () => (printed.includes("\n") ? JSON.parse(printed) : null) };
}

test("close() stops everything: no reconnect, no timer left, so the process exits by itself", async (t) => {
  const closing = runChild(await credsFor("P-close"), true);
  // the same clients, not closed: their timers keep the process alive. (A participant of its own: with
  // two pages sending in one chat at once, the one refused with reply_in_progress asks `history`, which
  // binds the chat to its socket, and under load the other page's reply can stream there instead.)
  const control = runChild(await credsFor("P-close-control"), false);
  t.after(() => {
    closing.child.kill();
    control.child.kill();
  });

  await within(closing.exited, "the child to exit");
  assert.equal(closing.child.exitCode, 0, closing.output());
  const report = closing.report();
  assert.deepEqual(report.before, ["open", "reconnecting", "connecting", true]); // mid-reply, backing off, in a handshake
  assert.deepEqual(report.after, ["closed", "closed", "closed"]);
  assert.deepEqual(report.late, ["closed", "closed", "closed"]); // one "closed" each, nothing after
  assert.equal(report.timers, 0, "a closed client left a timer");

  const kept = await until(() => control.report(), { what: "the control child's report" });
  assert.deepEqual(kept.before, ["open", "reconnecting", "connecting", true]);
  assert.ok(kept.timers > 0, "without close(), the clients keep timers (the check has teeth)");
  assert.equal(control.child.exitCode, null, "without close(), the client keeps the process alive");
});
