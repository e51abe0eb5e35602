"""`python -m ws_handlers.ops --help`."""

from .cli import main

raise SystemExit(main())
