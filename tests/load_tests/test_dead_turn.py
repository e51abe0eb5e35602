"""A turn that dies mid-reply (its process killed) blocks the chat only until its lease lapses
(issue 13, item 9), and a local restart frees it at once. Real stacks in child processes, one
SQLite store, real sockets; load_tests.dead_turn does the participant's part."""

from __future__ import annotations

from load_tests import dead_turn

LEASE = 6  #: REPLY_LEASE_SECONDS for these runs (5 at least); the service's default is 15
FAST_MODEL = (0.0, 0.0)  #: the survivor's offline model, unpaced


def _answered_once(observed: dead_turn.Observed) -> None:
    """The dead turn's message and the new one, each stored once and each answered once."""
    roles = {seq: (role, cmid) for seq, role, cmid in observed.transcript}
    user = [seq for seq, (role, cmid) in roles.items() if role == "user"]
    assert [roles[seq][1] for seq in user] == ["m1", "m2"]
    assert all(roles.get(seq + 1, ("", None))[0] == "assistant" for seq in user), observed.transcript


def test_a_dead_turn_blocks_the_chat_until_its_lease_lapses_then_a_retry_works():
    observed = dead_turn.measure("crash", lease=LEASE, survivor_model=FAST_MODEL)
    reply_seq = observed.user_seq + 1
    # while the dead turn's lease holds: honest about it, nothing lost, nothing doubled
    assert observed.replying_at_start == reply_seq
    assert observed.resend_while_blocked == ["ack"]
    assert observed.new_message_while_blocked == "reply_in_progress"
    # then start stops saying replying, the same message resent gets a fresh reply
    assert observed.free_s is not None
    retry = observed.retry_frames
    assert retry[0]["type"] == "ack" and retry[0]["duplicate"] is True and retry[0]["seq"] == observed.user_seq
    assert "delta" in [f["type"] for f in retry]
    assert retry[-1]["type"] == "message" and retry[-1]["seq"] == reply_seq and retry[-1]["text"]
    # and a new message is accepted and answered
    new = observed.new_message_frames
    assert new[0]["type"] == "ack" and new[0]["duplicate"] is False
    assert new[-1]["type"] == "message" and new[-1]["seq"] == new[0]["seq"] + 1
    _answered_once(observed)


def test_a_local_restart_frees_the_chat_at_once():
    # the service's lease (15 s), longer than a restart takes: only the restart can have freed the chat
    observed = dead_turn.measure("restart", survivor_model=FAST_MODEL)
    assert observed.replying_at_start is None
    assert observed.retry_frames[0]["duplicate"] is True
    assert observed.retry_frames[-1]["type"] == "message" and observed.retry_frames[-1]["seq"] == observed.user_seq + 1
    _answered_once(observed)
