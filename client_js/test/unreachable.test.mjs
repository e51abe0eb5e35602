// A token the gateway refuses (expired, forged): browsers see only a close, so the client says so.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { makeClient, startStack, until } from "./stack.mjs";

let stack, credsFor;
before(async () => {
  stack = await startStack();
  credsFor = stack.prefetch(["P-refused-token"]);
});
after(() => stack?.stop());

test("a handshake refused again and again becomes a cannot_connect error, and retrying goes on", async (t) => {
  const creds = await credsFor("P-refused-token");
  const { client, events } = makeClient({ ...creds, token: creds.token + "x" }, { backoffBaseMs: 20, backoffMaxMs: 60 });
  t.after(() => client.close());
  client.start().catch(() => {});
  await until(() => events.some((e) => e.type === "error" && e.code === "cannot_connect"), { what: "cannot_connect" });
  const errors = events.filter((e) => e.type === "error");
  assert.equal(errors.length, 1, "said once, not on every attempt");
  assert.equal(errors[0].retryable, true);
  const attempts = events.filter((e) => e.type === "state" && e.state === "reconnecting").length;
  await until(() => events.filter((e) => e.type === "state" && e.state === "reconnecting").length > attempts + 1,
    { what: "further attempts" });
  assert.equal(client.state, "reconnecting");
});

test("a URL the WebSocket cannot even open is a connect_failed error and the client closes", async () => {
  const { client, events } = makeClient({ url: "not a url", token: "t", ticket: "x" });
  await assert.rejects(client.start());
  assert.deepEqual(events.filter((e) => e.type === "error").map((e) => [e.code, e.retryable]), [["connect_failed", false]]);
  assert.equal(client.state, "closed");
});
