"""The chat service's Lambda code: the entry points, the core (ports and domain, no I/O) and its
adapters (`ws_handlers.adapters`); docs/architecture.md, "Modules".

Kept free of imports so that `ws_handlers.tickets` (used by the experiment server to
mint tokens and tickets) loads without the service's heavier dependencies.
"""
