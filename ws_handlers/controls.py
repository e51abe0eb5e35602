"""What the request paths obey: the experiment's switches, the service's, and the breaker's."""

from __future__ import annotations

from .store import ControlItems, Controls


def obeyed(items: ControlItems) -> Controls:
    """The items as one set of controls: either pause stops the experiment (the service's pauses
    every experiment); the budget, the tokens spent and the allowlist are the experiment's (the
    service's item has none: TOKEN_BUDGET is its budget); model calls wait for the breaker."""
    own = items.experiment
    return Controls(
        paused=own.paused or items.service.paused,
        token_budget=own.token_budget,
        tokens_used=own.tokens_used,
        llm_paused_until=items.breaker.open_until,
        allowlist=own.allowlist,
    )
