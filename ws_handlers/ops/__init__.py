"""The operator's command line: `python -m ws_handlers.ops` (or `chat-ops`), docs/operations.md.

Pause and resume, the token budget, allowlists, live status, export and data deletion, against the
local stack's SQLite file or DynamoDB (an endpoint, or a deployed stack's tables). Not part
of the Lambda code: ws_handlers/Makefile leaves this package out of the functions' zips.
"""

from __future__ import annotations


class OpsError(Exception):
    """A refusal or failure the operator is told about in one line; `exit_code` 2 for bad input."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
