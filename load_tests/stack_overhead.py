"""What the stack adds to each reply: the client's latency split around the model's own time.

`TTFD - the model's TTFT measured alone before the load` (report.py's "TTFD minus model TTFT")
charges the stack with whatever the co-located model loses to contention during a burst. Here
each reply is split with the model's own per-request times (local_gateway/model_timings.py,
`GET /_timings`, recorded when the model runs with OFFLINE_MODEL_TIMINGS):

    TTFD  = (a) before the model: the client sends -> the model has the request (`received`)
          + (b) the model's own TTFT under the load: `received` -> its first token written
          + (c) after the model: first token written -> the client has the first delta
    reply = (a') before the model, as (a) for the request that finished the reply
          + the model's own time: `received` -> the end of its stream (`[DONE]`, after the last
            token, the finish and the usage chunks)
          + (c') after the model: the end of the stream -> the client has the final `message`

The model reads each time just before the write (model_timings.py), so (c) and (c') are never
negative and include the write itself (microseconds).

The stack's overhead is (a)+(c), and (a')+(c') for the full reply. Every time is
`time.monotonic()`: on Linux CLOCK_MONOTONIC, one clock for all processes of the machine, so
the load generator's readings and the model process's can be subtracted (only when both run on
one machine: the local stack).

Pairing: the client puts a marker in each message (runner.py) and the model records the one in
the request's last user message. A marker can have several requests: the service's own retries
of the model call (a 429/5xx, a cut stream), a reply job delivered twice, or the client's
retried send. Only requests received after the answered attempt was sent count; of those, the
first delta is paired with the latest request whose first token was written before the client
had it, and the final message with the latest request whose stream ended before the client had
it (usually the same request). A reply with no such request is counted as unpaired, never
guessed; replies whose marker had several requests are counted (`multi_request`).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from .stats import summary_ms

#: The split's parts, in the order of the report's rows: (key, label).
PARTS = (
    ("before_model", "(a) send -> the model has the request"),
    ("model_ttft", "(b) the model's own TTFT under the load"),
    ("after_model_first", "(c) model's first token -> first delta"),
    ("stack_to_first_delta", "stack overhead to first delta (a)+(c)"),
    ("model_reply", "the model's own full reply under the load"),
    ("after_model_done", "(c') model's stream end -> final message"),
    ("stack_to_full_reply", "stack overhead to full reply (a')+(c')"),
)


async def fetch(model_url: str, timeout: float = 30.0) -> dict[str, Any] | None:
    """The model's `GET /_timings` document (model_url is the OpenAI base URL, …/v1), or None
    when the model does not answer it or records nothing (not the offline model, or not asked to)."""
    base = model_url.rstrip("/")
    base = base[: -len("/v1")] if base.endswith("/v1") else base
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(f"{base}/_timings") as response:
                if response.status != 200:
                    return None
                document = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("enabled") else None


def _latest(requests: list[dict[str, Any]], key: str, by: float) -> dict[str, Any] | None:
    """The latest-received request whose `key` time is known and no later than `by`."""
    fitting = [r for r in requests if r.get(key) is not None and r[key] <= by]
    return max(fitting, key=lambda r: r["received"]) if fitting else None


def split_one(sample: dict[str, Any], requests: list[dict[str, Any]]) -> dict[str, float] | None:
    """One reply's split (seconds), from its sample (Reply.public()) and the model's records
    carrying its marker; None when the reply did not finish or no request fits."""
    sent = sample.get("attempt_sent_mono")
    if sent is None or sample.get("ttfd_s") is None or sample.get("reply_s") is None:
        return None
    first_delta, final = sent + sample["ttfd_s"], sent + sample["reply_s"]
    after_send = [r for r in requests if r["received"] >= sent]
    first = _latest(after_send, "first_token", first_delta)
    done = _latest(after_send, "done", final)
    if first is None or done is None:
        return None
    parts = {
        "before_model": first["received"] - sent,
        "model_ttft": first["first_token"] - first["received"],
        "after_model_first": first_delta - first["first_token"],
        "before_model_reply": done["received"] - sent,
        "model_reply": done["done"] - done["received"],
        "after_model_done": final - done["done"],
    }
    parts["stack_to_first_delta"] = parts["before_model"] + parts["after_model_first"]
    parts["stack_to_full_reply"] = parts["before_model_reply"] + parts["after_model_done"]
    return parts


def analyse(samples: list[dict[str, Any]], timings: dict[str, Any] | None) -> dict[str, Any]:
    """Attach each finished reply's split to its sample (`split`, seconds) and summarise (ms).

    {"available": False} when there are no timings (a deployed stack, another model)."""
    if not timings:
        return {"available": False}
    by_marker: dict[str, list[dict[str, Any]]] = {}
    for record in timings.get("records", []):
        if record.get("marker"):
            by_marker.setdefault(record["marker"], []).append(record)
    finished = [s for s in samples if s.get("reply_s") is not None]
    unpaired = 0
    for sample in finished:
        sample["split"] = split_one(sample, by_marker.get(sample.get("marker", ""), []))
        unpaired += sample["split"] is None
    splits = [s["split"] for s in finished if s["split"] is not None]
    return {
        "available": True,
        "replies": len(finished),
        "paired": len(splits),
        "unpaired": unpaired,
        "multi_request": sum(1 for s in finished if len(by_marker.get(s.get("marker", ""), [])) > 1),
        "timings_dropped": timings.get("dropped", 0),
        "ms": {key: summary_ms([split[key] for split in splits]) for key, _ in PARTS},
    }


def markdown(result: dict[str, Any]) -> list[str]:
    """The report's section on the split."""
    split = result.get("stack_overhead") or {}
    if not split.get("available"):
        return []
    lines = ["## What the stack adds (the latency split around the model's own times)", "",
             f"{split['paired']} of {split['replies']} replies paired with the model's request by their marker "
             f"({split['unpaired']} unpaired, {split['multi_request']} with several model requests, "
             f"{split['timings_dropped']} model records dropped); docs/benchmarks.md says how.", "",
             "| part (ms) | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    for key, label in PARTS:
        s = split["ms"][key]
        cells = ["-" if s[q] is None else f"{s[q]:.1f}" for q in ("p50", "p95", "p99", "max")]
        lines.append(f"| {label} | {s['count']} | " + " | ".join(cells) + " |")
    return lines + [""]
