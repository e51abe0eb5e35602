"""Metrics from handlers that run side by side on threads of one process (the local stack).

Lambda runs one invocation per process; the local stack runs many on threads of one, and
Powertools keeps one metrics buffer per process. Unguarded, one invocation's flush emptied
the buffer while another was serialising it, and the other's `$connect` failed with HTTP 500.
"""

from __future__ import annotations

import json
import threading
import warnings

from ws_handlers.observability import metrics

THREADS, CALLS = 8, 150


@metrics.log_metrics
def _handler(event: dict, context: object) -> dict:
    metrics.add_metric(name="Connections", unit="Count", value=1)
    return {"statusCode": 200}


def test_handlers_on_many_threads_never_fail_and_every_metric_is_emitted_once(capsys) -> None:
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def calls() -> None:
        start.wait()
        for _ in range(CALLS):
            try:
                assert _handler({}, None) == {"statusCode": 200}
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flush that finds the buffer already emptied warns
        threads = [threading.Thread(target=calls) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert sum(sum(blob.get("Connections", [])) for blob in emitted) == THREADS * CALLS
