// Streamed replies, and resuming one after the socket drops: the real stack, real sockets.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { applyDelta } from "../chat-client.js";
import { asRows, behindProxy, makeClient, render, startProxy, startStack, stored, until, within } from "./stack.mjs";

let stack, credsFor;
before(async () => {
  stack = await startStack({ tps: 40, ttftMs: 50 }); // a reply streams for about two seconds
  credsFor = stack.prefetch(["P-stream", "P-drop", "P-away", "P-reload", "P-emoji"]);
});
after(() => stack?.stop());

/** The reference merge of the frames received agrees with the transcript (acks carry no text: users' seqs may be absent). */
function assertRendered(log, transcript) {
  const shown = render(log.filter((l) => l.dir === "in").map((l) => l.frame));
  for (const m of transcript) if (m.role === "assistant" || shown.has(m.seq)) assert.equal(shown.get(m.seq), m.text, `seq ${m.seq}`);
}
const of = (events, type) => events.filter((e) => e.type === type);

/** Every stored message once, in seq order, without a gap; nothing left pending or streaming. */
function assertComplete(transcript) {
  assert.deepEqual(transcript.map((m) => m.seq), transcript.map((_, i) => i + 1));
  assert.ok(transcript.every((m) => m.status === "stored"), JSON.stringify(transcript));
}

/** Each delta event's text extends the previous one: the participant never sees text vanish or repeat. */
function assertGrows(deltas) {
  for (let i = 1; i < deltas.length; i++) {
    assert.ok(deltas[i].text.startsWith(deltas[i - 1].text), `delta ${i} does not extend delta ${i - 1}`);
  }
}

test("a reply streams: deltas arrive, the transcript grows, the final text is the merged deltas and what history returns", async (t) => {
  const creds = await credsFor("P-stream");
  const { client, events, log } = makeClient(creds);
  t.after(() => client.close());
  const chat = await within(client.start(), "start()");
  assert.equal(chat.chatId, client.chatId);
  assert.equal(client.state, "open");
  assert.equal(client.limits.user_messages, 0);
  assert.deepEqual(client.transcript.map((m) => [m.seq, m.role, m.status]), [[1, "assistant", "stored"]]); // the opening

  const id = client.send("Tell me about primes");
  assert.deepEqual(client.transcript.at(-1), { seq: null, role: "user", text: "Tell me about primes", client_msg_id: id, status: "pending" });
  assert.equal(client.busy, true);
  const final = await until(() => of(events, "message")[0]?.message, { what: "the reply" });

  const [ack] = of(events, "ack");
  assert.deepEqual([ack.client_msg_id, ack.seq, ack.duplicate], [id, 2, false]);
  assert.equal(final.seq, 3);
  const deltas = of(events, "delta");
  assert.ok(deltas.length >= 5, `only ${deltas.length} deltas`);
  assertGrows(deltas);
  assert.equal(deltas.at(-1).text, final.text); // the merged deltas are the reply
  // the widget renders from `transcript` events: the reply's entry grows while streaming, then is stored
  const snapshots = of(events, "transcript").map((e) => e.transcript.find((m) => m.seq === 3)).filter(Boolean);
  const streaming = snapshots.filter((m) => m.status === "streaming");
  assert.ok(streaming.length >= 5 && new Set(streaming.map((m) => m.text.length)).size >= 5);
  assertGrows(streaming);
  assert.deepEqual(snapshots.at(-1), { seq: 3, role: "assistant", text: final.text, status: "stored" });

  assert.equal(client.busy, false);
  assert.equal(client.limits.user_messages, 1);
  assertComplete(client.transcript);
  assert.equal(client.transcript[1].client_msg_id, id);
  const { messages } = await stored(creds);
  assert.deepEqual(asRows(client.transcript), asRows(messages)); // what `history` returns
  assertRendered(log, client.transcript); // the reference merge agrees
});

test("a socket dropped in the middle of a reply resumes on a new one: every message once, in seq order, no gap", async (t) => {
  const creds = await credsFor("P-drop");
  const proxy = await startProxy(stack.port);
  const { client, events, log } = makeClient({ ...creds, url: proxy.url });
  t.after(async () => {
    client.close();
    await proxy.close();
  });
  await within(client.start(), "start()");

  // The model holds the reply after three tokens until the client is back on a new socket.
  await stack.faults([{ kind: "stall", after_tokens: 3, seconds: 3600 }]);
  client.send("Tell me about primes");
  await until(() => of(events, "delta").length >= 1, { what: "the reply to start streaming" });
  await until(async () => (await stack.stalled()) > 0, { what: "the model to hold the reply" });
  proxy.drop(); // Wi-Fi gone: no close frame
  await until(() => log.some((l) => l.socket === 2 && l.dir === "in" && l.frame.type === "chat"),
    { what: "the client back, its chat started again" });
  await stack.release();
  const final = await until(() => of(events, "message")[0]?.message, { what: "the reply" });

  const states = of(events, "state").map((e) => e.state);
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
  assert.equal(of(events, "chat").length, 2); // started again on the new socket
  const resumed = log.filter((l) => l.socket === 2 && l.dir === "in" && l.frame.type === "delta");
  assert.ok(resumed.length > 0 && resumed[0].frame.offset === 0, "the reply went on streaming on the new socket");
  assert.equal(log.filter((l) => l.dir === "out" && l.frame.action === "send").length, 1); // acked before the drop: not resent
  assertGrows(of(events, "delta"));
  assert.equal(of(events, "delta").at(-1).text, final.text);

  assertComplete(client.transcript);
  assert.equal(client.transcript.length, 3);
  const { chat } = await stored(creds); // a fresh client's `start` answer reflects storage
  assert.deepEqual(asRows(client.transcript), asRows(chat.messages));
  assertRendered(log, client.transcript);
});

test("a reply that finishes while the participant is offline is shown complete after the reconnect", async (t) => {
  const creds = await credsFor("P-away");
  const proxy = await startProxy(stack.port);
  const { client, events, log } = makeClient({ ...creds, url: proxy.url });
  t.after(async () => {
    client.close();
    await proxy.close();
  });
  await within(client.start(), "start()");

  const id = client.send("Tell me about primes");
  await until(() => of(events, "delta").length >= 1, { what: "the reply to start streaming" });
  proxy.outage();
  proxy.drop();
  await until(() => client.state === "reconnecting", { what: "the client to notice" });
  const partial = client.transcript.find((m) => m.seq === 3);
  assert.equal(partial.status, "streaming");
  assert.equal(client.busy, true);
  // the reply (about two seconds) is written and stored meanwhile
  await until(async () => (await stored(creds)).messages.some((m) => m.seq === 3), { what: "the reply to be stored" });
  proxy.restore();
  await until(() => client.transcript.find((m) => m.seq === 3)?.status === "stored", { what: "the stored reply" });

  const resumed = log.filter((l) => l.socket > 1 && l.dir === "in" && l.frame.type === "chat");
  assert.ok(resumed[0].frame.messages.some((m) => m.seq === 3), "the start answer carried the finished reply");
  assert.equal(log.filter((l) => l.socket > 1 && l.dir === "out" && l.frame.action === "send").length, 0); // nothing to resend
  // a long outage is reported as cannot_connect (the client cannot tell it from a refused token)
  assert.deepEqual(of(events, "error").map((e) => e.code).filter((c) => c !== "cannot_connect"), []);
  assert.equal(client.busy, false);
  assertComplete(client.transcript);
  assert.equal(client.transcript[1].client_msg_id, id);
  const { chat } = await stored(creds);
  assert.deepEqual(asRows(client.transcript), asRows(chat.messages));
  assert.ok(client.transcript[2].text.startsWith(partial.text)); // what was shown before the drop is kept, then completed
});

test("a page reloaded in the middle of a reply: the new client is busy until the reply, which it shows, is stored", async (t) => {
  const creds = await credsFor("P-reload");
  const first = makeClient(creds);
  t.after(() => first.client.close());
  await within(first.client.start(), "start()");
  first.client.send("Tell me about primes");
  await until(() => of(first.events, "delta").length >= 1, { what: "the reply to start streaming" });
  first.client.close(); // the page goes away

  const second = makeClient(creds);
  t.after(() => second.client.close());
  await within(second.client.start(), "start() after the reload");
  const [answer] = second.log.filter((l) => l.dir === "in" && l.frame.type === "chat");
  assert.equal(answer.frame.replying, 3);
  assert.equal(second.client.busy, true); // the widget keeps the input locked: a send now would be refused
  await until(() => of(second.events, "message").length === 1, { what: "the reply" });
  assert.ok(of(second.events, "delta").length >= 1, "the reply went on streaming to the new page");
  assert.equal(second.client.busy, false);
  assertGrows(of(second.events, "delta"));
  assertComplete(second.client.transcript);
  const { chat } = await stored(creds);
  assert.deepEqual(asRows(second.client.transcript), asRows(chat.messages));
  assertRendered(second.log, second.client.transcript);
});

test("applyDelta places a piece by its offset in code points, as the server counts (Python str indexes)", () => {
  const have = "a🍕b"; // three code points, four UTF-16 units
  assert.equal(applyDelta(have, 3, "c"), "a🍕bc"); // at the end
  assert.equal(applyDelta(have, 2, "b!"), "a🍕b!"); // from the middle: replaced from there
  assert.equal(applyDelta(have, 1, "🍕"), have); // a repeat of what is there changes nothing
  assert.equal(applyDelta(have, 0, "a🍕"), have); // a resumed stream's first piece: never shorter
  assert.equal(applyDelta(have, 4, "x"), null); // a gap
  assert.equal(applyDelta("", 0, "👩\u200d👧"), "👩\u200d👧");
});

test("a reply with emoji streams without losing or repeating a character, across repeated pieces and a resumed stream", async (t) => {
  const { client, events, log, proxy, creds } = await behindProxy(t, stack, await credsFor("P-emoji"));
  // Each piece of three code points or more comes twice: itself, then its inner part again at
  // an offset in the middle of the text received (the client must find it already there).
  proxy.rewrite((f) => {
    const chars = f.type === "delta" ? [...f.text] : [];
    return chars.length < 3 ? null : [f, { ...f, offset: f.offset + 1, text: chars.slice(1, -1).join("") }];
  });
  const family = "👩\u200d👩\u200d👧";
  // The model holds the reply two tokens after the emoji until the client is back: the rest
  // then streams on the new socket, however long the reconnection took. (The emoji may still
  // wait in the service's coalescing buffer: it is pushed with the next token.)
  await stack.faults([{ kind: "stall", after_text: family, after_tokens: 2, seconds: 3600 }]);
  client.send(`Pizza 🍕 party 🎉 tonight ${family} yes`); // the offline model quotes it
  await until(() => of(events, "delta").length >= 1, { what: "the reply to start streaming" });
  await until(async () => (await stack.stalled()) > 0, { what: "the model to hold the reply after the emoji" });
  proxy.drop(); // the stream resumes on a new socket, from offset 0
  await until(() => log.some((l) => l.socket === 2 && l.dir === "in" && l.frame.type === "chat"),
    { what: "the client back, its chat started again" });
  await stack.release();
  const final = await until(() => of(events, "message")[0]?.message, { what: "the reply" });

  assert.ok(final.text.includes(`"Pizza 🍕 party 🎉 tonight ${family} yes"`), final.text);
  const resumed = log.filter((l) => l.socket === 2 && l.dir === "in" && l.frame.type === "delta");
  assert.equal(resumed[0]?.frame.offset, 0);
  assert.ok(resumed[0].frame.text.includes(family), "the resumed stream started with the emoji");
  const after = [...final.text].indexOf("🍕");
  const placed = log.filter((l) => l.dir === "in" && l.frame.type === "delta" && l.frame.offset > after);
  assert.ok(placed.length >= 4, "pieces placed after the emoji, by code point offsets");
  const texts = of(events, "delta").map((d) => d.text);
  for (const [i, text] of texts.entries()) {
    assert.ok(text.isWellFormed(), `delta ${i} split a surrogate pair`);
    assert.ok(final.text.startsWith(text), `delta ${i} is not a prefix of the reply: ${JSON.stringify(text)}`);
    if (i > 0) assert.ok(text.length > texts[i - 1].length, `delta ${i} did not grow`); // a repeat is no event
  }
  assert.equal(texts.at(-1), final.text);
  assert.equal(log.filter((l) => l.dir === "out" && l.frame.action === "send").length, 1);
  assertComplete(client.transcript);
  const { chat } = await stored(creds);
  assert.deepEqual(asRows(client.transcript), asRows(chat.messages));
  assertRendered(log, client.transcript);
});
