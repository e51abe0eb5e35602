"""The chat service's Lambda code: handlers, the chat domain, and its adapters.

Kept free of imports so that `ws_handlers.tickets` (used by the experiment server to
mint tokens and tickets) loads without the service's heavier dependencies.
"""
