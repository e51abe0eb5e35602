// Helpers for the node --test suites: the real local stack as a child process, credentials
// from its `mint` command, a TCP proxy that plays the network, clients that record their
// frames, and bounded waits. (node --test also loads this file as a test file: it only
// exports functions, so that is a no-op.) Tests wait for what they expect, never for a fixed
// time: every timeout here is only a bound that ends a failing wait, generous for a busy machine.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { ChatClient } from "../chat-client.js";

export const ROOT = path.resolve(fileURLToPath(new URL("../..", import.meta.url)));
/** The one place the interpreter is named: the project's venv, unless PYTHON says otherwise. */
export const PYTHON = process.env.PYTHON || path.join(ROOT, ".venv", "bin", "python");
/** How long a wait may take before the test fails: only a bound, a minute on a busy machine. */
export const PATIENCE_MS = 60000;
/** How long a child process (the stack's start, `mint`) may take before a test fails. Only a
 * bound: waits end when the child is ready, and on a busy machine Python's imports alone can
 * take many seconds. */
const CHILD_PATIENCE_MS = 120000;
const STOP_GRACE_MS = 5000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves when `check()` is truthy (polled every 20 ms); rejects after `timeoutMs` with `what`. */
export async function until(check, { timeoutMs = PATIENCE_MS, what = "a condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Rejects if `promise` has not settled within `timeoutMs` (a bound, not a pace), naming `what`. */
export function within(promise, what = "a promise", timeoutMs = PATIENCE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `python -c` this with the data directory, the URL and names: `mint`'s JSON for each name, a line each. */
const MINT_ALL = `
import contextlib, io, json, sys
from local_gateway.__main__ import main
data_dir, url, *names = sys.argv[1:]
for name in names:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--data-dir", data_dir, "mint", "--participant", name, "--url", url])
    print(json.dumps(json.loads(out.getvalue())), flush=True)
`;

/** A promise with its resolve and reject (node 20 has no Promise.withResolvers). */
function deferred() {
  let resolve, reject;
  const promise = new Promise((yes, no) => {
    resolve = yes;
    reject = no;
  });
  return { promise, resolve, reject };
}

/**
 * Start `python -m local_gateway serve` on free loopback ports, in its own process group.
 * `tps` and `ttftMs` pace the offline model; `idleTimeout` is the gateway's, in seconds;
 * `llmConcurrency` caps the replies written at once (the rest wait in the reply queue; default:
 * the template's); `duplicateDeliveries` is the share of reply jobs the queue delivers twice
 * (1: every one, as SQS may: the client must not notice); `throttling` [rate, burst] is the
 * WebSocket stage's per-route throttle (default: the template's).
 */
export async function startStack({ tps = 400, ttftMs = 30, idleTimeout = 2, llmConcurrency, duplicateDeliveries = 1,
  throttling } = {}) {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), "chat-client-test-"));
  const modelPort = await freePort(); // known, for fault injection (the ready line does not print it)
  const args = ["-m", "local_gateway", "--data-dir", dataDir, "serve", "--port", "0", "--management-port", "0",
    "--model-port", String(modelPort), "--demo-port", "0", "--entry-port", "0", "--idle-timeout", String(idleTimeout),
    "--duplicate-deliveries", String(duplicateDeliveries),
    ...(llmConcurrency != null ? ["--llm-concurrency", String(llmConcurrency)] : []),
    ...(throttling ? ["--throttling", ...throttling.map(String)] : [])];
  const env = { ...process.env, OFFLINE_MODEL_TTFT_MS: String(ttftMs), OFFLINE_MODEL_TOKENS_PER_SECOND: String(tps),
    OPENAI_API_KEY: "", OPENAI_BASE_URL: "" }; // always the offline model
  const child = spawn(PYTHON, args, { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const keep = (chunk) => (output = (output + chunk).slice(-20000));
  child.stderr.setEncoding("utf8").on("data", keep);
  child.stdout.setEncoding("utf8");
  let url;
  try {
    url = await within(new Promise((resolve, reject) => {
      child.stdout.on("data", (chunk) => {
        keep(chunk);
        const found = /WebSocket\s+(ws:\/\/\S+?)\?token=/.exec(output);
        if (found) resolve(found[1]);
      });
      child.once("error", reject);
      exited.then((code) => reject(new Error(`the stack exited (${code}) before it was ready:\n${output}`)));
    }), "the stack to be ready", CHILD_PATIENCE_MS);
  } catch (error) {
    await stop();
    throw error;
  }

  async function stop() {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, "SIGTERM");
      } catch {}
      const timer = setTimeout(() => {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {}
      }, STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    }
    await rm(dataDir, { recursive: true, force: true });
  }

  /** Credentials from the stack's own `mint` command: {url, token, ticket}. */
  function mint(participant, chatKey = "main") {
    const mintArgs = ["-m", "local_gateway", "--data-dir", dataDir, "mint", "--participant", participant,
      "--chat-key", chatKey, "--url", url];
    return new Promise((resolve, reject) => {
      execFile(PYTHON, mintArgs, { cwd: ROOT, timeout: CHILD_PATIENCE_MS }, (error, stdout, stderr) => {
        if (error) return reject(new Error(`mint failed: ${error.message}\n${stderr}`));
        const { url: wsUrl, token, ticket } = JSON.parse(stdout);
        resolve({ url: wsUrl, token, ticket });
      });
    });
  }

  /** Queue failures in the offline model (POST /_faults): each model request takes the next one. */
  async function faults(list) {
    const response = await fetch(`http://127.0.0.1:${modelPort}/_faults`, {
      method: "POST", body: JSON.stringify({ faults: list }), signal: AbortSignal.timeout(PATIENCE_MS),
    });
    if (!response.ok) throw new Error(`faults refused: ${response.status} ${await response.text()}`);
  }

  /**
   * Mint these participants' credentials in the background while the tests run, one after the
   * other in a single Python process running the same `mint` command (a Python start per name
   * was most of this suite's CPU on a busy machine); returns name -> promise.
   */
  function prefetch(names) {
    const waiting = new Map(names.map((name) => [name, deferred()]));
    const child = spawn(PYTHON, ["-c", MINT_ALL, dataDir, url, ...names], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let pending = "";
    let errors = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      const lines = (pending + chunk).split("\n");
      pending = lines.pop();
      for (const line of lines.filter(Boolean)) {
        const { participant, url: wsUrl, token, ticket } = JSON.parse(line);
        waiting.get(participant).resolve({ url: wsUrl, token, ticket });
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk) => (errors += chunk));
    child.once("exit", (code) => {
      for (const entry of waiting.values()) entry.reject(new Error(`mint failed (exit ${code}):\n${errors}`)); // no-op once resolved
    });
    waiting.forEach((entry) => entry.promise.catch(() => {})); // a failure surfaces in the test that awaits it
    return (name) => within(waiting.get(name)?.promise ?? mint(name), `credentials for ${name}`, CHILD_PATIENCE_MS);
  }

  /** How many replies the offline model holds in a stall now (GET /_stats). */
  async function stalled() {
    const response = await fetch(`http://127.0.0.1:${modelPort}/_stats`, { signal: AbortSignal.timeout(PATIENCE_MS) });
    if (!response.ok) throw new Error(`stats refused: ${response.status} ${await response.text()}`);
    return (await response.json()).stalled;
  }

  /** End the offline model's stalls under way (POST /_faults/release): a test that has seen what it waited for. */
  async function release() {
    const response = await fetch(`http://127.0.0.1:${modelPort}/_faults/release`, {
      method: "POST", signal: AbortSignal.timeout(PATIENCE_MS),
    });
    if (!response.ok) throw new Error(`release refused: ${response.status} ${await response.text()}`);
    return (await response.json()).released;
  }

  return { url, port: Number(new URL(url).port), dataDir, mint, prefetch, faults, stalled, release, stop, output: () => output };
}

async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await new Promise((resolve, reject) => server.once("listening", resolve).once("error", reject));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A TCP proxy on loopback between the client and the gateway, to play the network:
 * drop() cuts every socket at once (RST, no close frame), blackhole() freezes the current
 * ones without closing them (a dead half-open socket), outage() refuses new connections
 * until restore(), swallow(predicate) drops the server's frames for which predicate(frame)
 * is true (whole WebSocket frames, parsed; null stops it): a lost answer on a live socket.
 * rewrite(fn) passes each of the server's frames (parsed) to fn, which returns the frames to
 * forward in its place (objects, sent as text frames; [] holds it back) or null for the frame
 * itself; null stops it.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let refusing = false;
  let rewrite = null;
  const server = net.createServer((client) => {
    if (refusing) return client.resetAndDestroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { client, upstream, up: true, down: true }; // which directions still flow
    pairs.add(pair);
    client.on("data", (data) => pair.up && upstream.write(data));
    let pending = Buffer.alloc(0); // server bytes not yet forwarded while rewriting: a partial frame
    let handshake = true; // the server's HTTP answer to the upgrade comes before any frame
    upstream.on("data", (data) => {
      if (!pair.down) return;
      if (!rewrite && !pending.length) {
        handshake = false;
        client.write(data);
        return;
      }
      pending = Buffer.concat([pending, data]);
      if (handshake) {
        const end = pending.indexOf("\r\n\r\n");
        if (end < 0) return;
        client.write(pending.subarray(0, end + 4));
        pending = pending.subarray(end + 4);
        handshake = false;
      }
      for (let frame; (frame = nextFrame(pending)); pending = pending.subarray(frame.size)) {
        const instead = rewrite && frame.text ? rewrite(JSON.parse(frame.text)) : null;
        if (!instead) client.write(pending.subarray(0, frame.size));
        else for (const other of instead) client.write(textFrame(JSON.stringify(other)));
      }
    });
    // closes travel only while the pair is healthy: a black hole forwards nothing, not even a FIN
    const closed = (other) => () => {
      if (pair.up && pair.down) other.destroy();
      if (client.destroyed && upstream.destroyed) pairs.delete(pair);
    };
    client.on("close", closed(upstream)).on("error", () => {});
    upstream.on("close", closed(client)).on("error", () => {});
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    port,
    url: `ws://127.0.0.1:${port}/local`,
    get connections() {
      return [...pairs].filter((p) => !p.client.destroyed).length;
    },
    /** Connections whose server side has closed (seen even through a black hole, which tells the client nothing). */
    get closedByServer() {
      return [...pairs].filter((p) => p.upstream.destroyed).length;
    },
    drop() {
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
    },
    blackhole() {
      for (const pair of pairs) pair.up = pair.down = false;
    },
    swallow(predicate) {
      rewrite = predicate && ((frame) => (predicate(frame) ? [] : null));
    },
    rewrite(fn) {
      rewrite = fn;
    },
    outage() {
      refusing = true;
    },
    restore() {
      refusing = false;
    },
    async close() {
      refusing = true;
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The first whole frame a server sent (unmasked): {size, text} (text for a final text frame), or null. */
function nextFrame(buf) {
  if (buf.length < 2) return null;
  let length = buf[1] & 0x7f;
  let header = 2;
  if (length === 126) [length, header] = [buf.length >= 4 ? buf.readUInt16BE(2) : Infinity, 4];
  else if (length === 127) [length, header] = [buf.length >= 10 ? Number(buf.readBigUInt64BE(2)) : Infinity, 10];
  if (buf.length < header + length) return null;
  const text = buf[0] === 0x81 ? buf.subarray(header, header + length).toString("utf8") : null; // FIN + text
  return { size: header + length, text };
}

/** A server's text frame (final, unmasked) carrying `text`. */
function textFrame(text) {
  const body = Buffer.from(text, "utf8");
  const n = body.length;
  let header;
  if (n < 126) header = Buffer.from([0x81, n]);
  else if (n < 65536) (header = Buffer.from([0x81, 126, 0, 0])).writeUInt16BE(n, 2);
  else (header = Buffer.from([0x81, 127, 0, 0, 0, 0, 0, 0, 0, 0])).writeBigUInt64BE(BigInt(n), 2);
  return Buffer.concat([header, body]);
}

let firingTimerMs; // while a traced timer's callback runs: the delay it was set for

/**
 * Until test `t` ends, what happens inside a timer's callback is marked with the delay that timer
 * was set for (`timerMs` in log entries and events): which timer made a reconnect or a resend is
 * checked without timing anything.
 */
export function traceTimers(t) {
  const real = globalThis.setTimeout;
  globalThis.setTimeout = (fn, ms, ...args) => real(() => {
    const outer = firingTimerMs;
    firingTimerMs = ms ?? 0;
    try {
      return fn(...args);
    } finally {
      firingTimerMs = outer;
    }
  }, ms);
  t.after(() => (globalThis.setTimeout = real));
}

/**
 * A `ws` WebSocket class that records, per socket, the frames sent and received, so tests
 * can check what went over the wire: log = [{socket, dir: "connect"|"out"|"in"|"close", frame?, code?,
 * timerMs?}] (timerMs: see traceTimers).
 */
export function recordingWebSocket() {
  const log = [];
  let sockets = 0;
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      const socket = ++sockets;
      this._socketNumber = socket;
      log.push({ socket, dir: "connect", timerMs: firingTimerMs });
      this.addEventListener("message", (event) => log.push({ socket, dir: "in", frame: JSON.parse(event.data) }));
      this.addEventListener("close", (event) => log.push({ socket, dir: "close", code: event.code }));
    }
    send(data, ...rest) {
      log.push({ socket: this._socketNumber, dir: "out", frame: JSON.parse(data), timerMs: firingTimerMs });
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: Recording, log, sockets: () => sockets };
}

/** A ChatClient over `ws` with test-sized timings, recording its events and frames. */
export function makeClient(creds, options = {}) {
  const rec = recordingWebSocket();
  const client = new ChatClient({
    ...creds,
    WebSocket: rec.WebSocket,
    heartbeatMs: 500, // the test gateway's idle timeout is 2 s
    pongTimeoutMs: 1000,
    backoffBaseMs: 100,
    backoffMaxMs: 1000,
    stableAfterMs: 500,
    replyTimeoutMs: 10000,
    ...options,
  });
  const events = [];
  for (const type of ["state", "chat", "transcript", "delta", "message", "ack", "queued", "error"]) {
    client.addEventListener(type, (event) => events.push({ type, timerMs: firingTimerMs, ...event.detail }));
  }
  return { client, events, log: rec.log, sockets: rec.sockets };
}

/** A started client behind a proxy of its own to `stack`; both are closed when test `t` ends, whatever happened. */
export async function behindProxy(t, stack, creds, options) {
  const proxy = await startProxy(stack.port);
  const made = makeClient({ ...creds, url: proxy.url }, options);
  t.after(async () => {
    made.client.close();
    await proxy.close();
  });
  await within(made.client.start(), "start()");
  return { creds, proxy, ...made };
}

/** The client's transcript is complete and exactly what storage holds; returns the stored messages. */
export async function assertMatchesStorage(transcript, creds) {
  assert.deepEqual(transcript.map((m) => m.seq), transcript.map((_, i) => i + 1));
  assert.ok(transcript.every((m) => m.status === "stored"), JSON.stringify(transcript));
  const { messages } = await stored(creds);
  assert.deepEqual(asRows(transcript), asRows(messages));
  return messages;
}

/** The reference merge of tests/local_gateway/test_stack_e2e.py: one text per seq (offsets in code points, as Python's str). */
export function render(frames) {
  const shown = new Map();
  for (const f of frames) {
    if (f.type === "chat" || f.type === "history") for (const m of f.messages) shown.set(m.seq, m.text);
    else if (f.type === "message") shown.set(f.seq, f.text);
    else if (f.type === "delta") {
      const current = [...(shown.get(f.seq) ?? "")];
      if (f.offset <= current.length) shown.set(f.seq, current.slice(0, f.offset).join("") + f.text);
    }
  }
  return shown;
}

/** What storage holds, through a fresh plain socket: `start`, then `history` from 0 (every page). */
export async function stored(creds) {
  const ws = new WebSocket(`${creds.url}?token=${encodeURIComponent(creds.token)}`);
  const frames = [];
  const next = (type) => within(new Promise((resolve, reject) => {
    const onMessage = (data) => {
      const frame = JSON.parse(data);
      if (frame.type === type || frame.type === "error") {
        ws.off("message", onMessage);
        frame.type === type ? resolve(frame) : reject(new Error(JSON.stringify(frame)));
      }
    };
    ws.on("message", onMessage);
  }), `a ${type} frame`);
  try {
    await within(new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject)), "a socket");
    let answer = next("chat");
    ws.send(JSON.stringify({ action: "start", ticket: creds.ticket }));
    const chat = await answer;
    const messages = [];
    let after = 0;
    for (;;) {
      answer = next("history");
      ws.send(JSON.stringify({ action: "history", chat_id: chat.chat_id, after_seq: after }));
      const page = await answer;
      frames.push(page);
      messages.push(...page.messages);
      if (!page.more) break;
      after = page.messages.at(-1).seq;
    }
    return { chat, messages };
  } finally {
    ws.terminate();
  }
}

/** The transcript's stored entries as [seq, role, text] (what storage should hold). */
export const asRows = (entries) => entries.map((m) => [m.seq, m.role, m.text]);
