// The reading pace: what a paced reply shows, on a clock the test moves.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Pacer } from "../pacer.js";

function clocked(pace, random = () => 0.5) {
  const clock = { ms: 1000 };
  const pacer = new Pacer(pace, { now: () => clock.ms, random });
  return { clock, pacer };
}

test("a reply appears a word at a time at the pace, the first word at once", () => {
  const { clock, pacer } = clocked({ words_per_minute: 120 }); // a word every 500 ms
  const text = "A prime is a whole number.";
  assert.equal(pacer.visible("s:3", text), "A");
  assert.equal(pacer.nextInMs(), 500);
  clock.ms += 499;
  assert.equal(pacer.visible("s:3", text), "A");
  clock.ms += 1;
  assert.equal(pacer.visible("s:3", text), "A prime");
  clock.ms += 1000;
  assert.equal(pacer.visible("s:3", text), "A prime is a");
  assert.ok(pacer.pending());
  clock.ms += 60000;
  assert.equal(pacer.visible("s:3", text), text);
  assert.ok(!pacer.pending());
  assert.equal(pacer.nextInMs(), null);
});

test("a stream slower than the pace shows each word as it comes, the next one a wait after it", () => {
  const { clock, pacer } = clocked({ words_per_minute: 600 }); // 100 ms a word
  assert.equal(pacer.visible("s:3", "Hello"), "Hello");
  clock.ms += 5000; // the model stalls
  assert.equal(pacer.visible("s:3", "Hello there, friend"), "Hello there,");
  assert.equal(pacer.nextInMs(), 100);
  clock.ms += 100;
  assert.equal(pacer.visible("s:3", "Hello there, friend"), "Hello there, friend");
});

test("jitter scales each wait within its bounds, and replies are paced on their own", () => {
  const slowest = clocked({ words_per_minute: 120, jitter: 0.5 }, () => 0.999999);
  slowest.pacer.visible("a", "one two");
  assert.ok(Math.abs(slowest.pacer.nextInMs() - 750) < 0.01);
  const fastest = clocked({ words_per_minute: 120, jitter: 0.5 }, () => 0);
  fastest.pacer.visible("a", "one two");
  assert.equal(fastest.pacer.nextInMs(), 250);
  fastest.clock.ms += 250;
  assert.equal(fastest.pacer.visible("b", "other reply"), "other"); // its own first word at once
  assert.equal(fastest.pacer.visible("a", "one two"), "one two");
});

test("trailing spaces and a text of spaces never hold a reply back", () => {
  const { pacer } = clocked({ words_per_minute: 60 });
  assert.equal(pacer.visible("s:1", "   "), "   ");
  assert.equal(pacer.visible("s:2", "Done.  \n"), "Done.  \n");
  assert.ok(!pacer.pending());
});
