"""A lean `Pusher` for functions in worker processes: a plain POST to the Management API emulator.

A worker process cannot hand frames to the gateway's event loop as `DirectPusher` does;
it has to cross to the stack's process. boto3 costs about a millisecond of CPU per push
(request building, SigV4 signing, retries' bookkeeping) for what is, to the emulator, one
unsigned POST. This pusher sends that POST with urllib3 (kept-alive connections, safe across
threads) and reads the answer the same way `ManagementApiPusher` does: 410 Gone, anything
else not 2xx a failure. `StackConfig.push = "management_api"` keeps boto3 in workers too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import urllib3

from ws_handlers.protocol import encode
from ws_handlers.push import ConnectionGone, PushFailed


class HttpPusher:
    def __init__(self, endpoint_url: str, timeout: float = 5.0, pool_size: int = 64) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self._pool = urllib3.PoolManager(maxsize=pool_size, timeout=urllib3.Timeout(connect=2, read=timeout),
                                         retries=False)

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        url = f"{self.endpoint_url}/@connections/{quote(connection_id, safe='')}"
        try:
            response = self._pool.request("POST", url, body=encode(frame))
        except urllib3.exceptions.HTTPError as exc:
            raise PushFailed(f"{type(exc).__name__}") from exc
        if response.status == 410:
            raise ConnectionGone(connection_id)
        if not 200 <= response.status < 300:
            raise PushFailed(f"{response.headers.get('x-amzn-ErrorType', 'HTTP')} ({response.status})")
