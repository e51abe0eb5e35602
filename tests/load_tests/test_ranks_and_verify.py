"""The burst's rank analysis and the verification's judgement, on hand-made data (no stack)."""

from __future__ import annotations

import random
from types import SimpleNamespace

from load_tests import ranks
from load_tests.verify import Verification, check


def _sample(acked: float, first_delta: float, *, queued: float | None = None) -> dict:
    return {"burst": True, "sent_at": 0.0, "acked_at": acked, "queued_at": acked if queued is None else queued,
            "queued_after_delta": False, "first_delta_at": first_delta, "done_at": first_delta + 2.0}


def test_a_staircase_in_arrival_order():
    """Ranks 1-10 start at once, each later block of 10 one reply (2 s) later, shuffled within blocks."""
    rng = random.Random(1)
    samples = [_sample(0.001 * r, 0.3 + 2.0 * (r // 10) + rng.uniform(0, 0.05)) for r in range(50)]
    rng.shuffle(samples)
    a = ranks.analyse(samples, slots=10)
    assert a["acked"] == a["started"] == 50 and a["spearman_ack_vs_first_delta"] > 0.95
    assert a["inversions_beyond_one_block"]["inverted"] == 0
    assert 1.9 < a["step_s"] < 2.1 and 2.25 < a["reply_length_s"] < 2.4
    assert [d["ranks"] for d in a["deciles"]][:2] == ["1-5", "6-10"] and len(a["blocks"]) == 5
    assert a["deciles"][0]["p50"] < 400 < a["deciles"][-1]["p50"]


def test_reversed_order_is_seen():
    samples = [_sample(0.001 * r, 100.0 - r) for r in range(40)]
    a = ranks.analyse(samples, slots=10)
    assert a["spearman_ack_vs_first_delta"] == -1.0
    inverted = a["inversions_beyond_one_block"]
    assert inverted["inverted"] == inverted["pairs"] > 0


def test_inversions_count_only_pairs_more_than_a_block_apart():
    assert ranks.inversions_beyond([(1, 5.0), (2, 1.0), (3, 2.0)], gap=1) == (1, 1)  # only ranks 1 and 3
    assert ranks.inversions_beyond([(1, 1.0), (2, 2.0), (3, 3.0)], gap=0) == (0, 3)


def test_queue_wait_is_zero_when_queued_came_after_the_first_delta():
    late = _sample(0.0, 1.0) | {"queued_at": None, "queued_after_delta": True}
    assert ranks.queue_wait([_sample(0.0, 1.5, queued=0.5), late]) == [1.0, 0.0]


def _reply(cmid: str, user_seq: int, text: str = "hi") -> SimpleNamespace:
    return SimpleNamespace(client_msg_id=cmid, user_seq=user_seq, final_text=text, merged_text=text,
                           reply_seq=user_seq + 1, error=None)


def _history(*roles_and_ids: tuple[str, str | None]) -> list[dict]:
    return [{"seq": n, "role": role, "client_msg_id": cmid, "text": "hi"} for n, (role, cmid) in enumerate(roles_and_ids, 1)]


def test_each_reply_stored_exactly_once():
    v = Verification()
    check(v, "P", [_reply("a", 2), _reply("b", 4)],
          _history(("assistant", None), ("user", "a"), ("assistant", None), ("user", "b"), ("assistant", None)))
    assert (v.stored_once, v.replies_stored, v.replies_duplicated, v.replies_unstored, v.duplicated) == (2, 2, 0, 0, 0)


def test_a_reply_stored_twice_and_one_never_stored_are_counted():
    v = Verification()
    check(v, "P", [_reply("a", 2), _reply("b", 5)],
          _history(("assistant", None), ("user", "a"), ("assistant", None), ("assistant", None), ("user", "b")))
    assert v.replies_stored == 1 and v.replies_duplicated == 1 and v.duplicated == 1 and v.replies_unstored == 1
    assert any("stored twice" in f for f in v.failures)
