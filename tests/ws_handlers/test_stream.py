"""Coalescing: the first piece at once, then batches by time or size."""

from ws_handlers.stream import Coalescer


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_first_piece_flushes_at_once_then_batches_by_time():
    clock = Clock()
    c = Coalescer(flush_seconds=0.1, flush_chars=1000, clock=clock)
    assert c.add("Hel") == "Hel"
    clock.now = 0.03
    assert c.add("lo") is None
    clock.now = 0.06
    assert c.add(",") is None
    clock.now = 0.11
    assert c.add(" world") == "lo, world"
    assert c.flush() is None


def test_batches_by_size():
    c = Coalescer(flush_seconds=60, flush_chars=5, clock=Clock())
    assert c.add("a") == "a"
    assert c.add("bc") is None
    assert c.add("def") == "bcdef"
    assert c.add("g") is None
    assert c.flush() == "g"


def test_empty_pieces_are_ignored():
    c = Coalescer(0.1, 10, clock=Clock())
    assert c.add("") is None and c.flush() is None
