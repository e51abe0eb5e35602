"""The push hand-off benchmark delivers every frame it pushes and reports a CPU time per push."""

from load_tests.push_handoff import measure


def test_every_frame_is_delivered_and_the_cpu_per_push_is_reported():
    result = measure(threads=4, frames=5, gap=0.0)  # measure() itself waits for all 20 deliveries
    assert result["process_us"] > 0 and result["loop_us"] >= 0
