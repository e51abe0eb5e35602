"""Busy ports, found before anything starts, so that the message names the setting to change.

A bind that fails deep inside asyncio gives an OSError traceback that names neither the
service nor the option; `serve` and `make dev` (otree_app/run_dev.py) check their ports
first instead. Standard library only: run_dev.py imports it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable


def in_use(host: str, port: int) -> bool:
    """Whether something listens on `host:port`. Checked as the servers bind (SO_REUSEADDR), so a
    port that a stopped run left in TIME_WAIT counts as free; 0 (any free port) always is."""
    if port == 0:
        return False
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def first_busy(host: str, ports: Iterable[tuple[int, str, str]]) -> str | None:
    """For (port, what listens there, the setting that moves it): a message about the first port in
    use, or None when all are free."""
    for port, what, setting in ports:
        if in_use(host, port):
            return (f"Port {port} is already in use on {host}, so {what} cannot listen there: "
                    f"stop whatever uses it, or choose another port with {setting}.")
    return None
