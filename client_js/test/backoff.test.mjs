// backoffDelay: the jittered, bounded delays of the client's reconnects and of survey.js's entry retries.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay } from "../chat-client.js";

test("each retry's delay is drawn in [0, min(max, base * 2^attempt)]: doubling, then capped", () => {
  const ceilings = [0, 1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(attempt, 500, 8000, () => 1));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
  assert.deepEqual([0, 3, 9].map((attempt) => backoffDelay(attempt, 500, 8000, () => 0)), [0, 0, 0]);
  assert.equal(backoffDelay(2, 500, 8000, () => 0.25), 500); // a quarter of the way up to 2000: full jitter
});

test("with Math.random the delays spread over the range (clients throttled together do not return together)", () => {
  const delays = Array.from({ length: 200 }, () => backoffDelay(3, 500, 8000));
  assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d <= 4000), String(delays));
  assert.ok(new Set(delays).size > 50, "the delays are spread, not one value");
});
