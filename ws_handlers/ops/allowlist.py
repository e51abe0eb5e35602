"""`chat-ops allowlist add|remove|list|clear`: the participant codes an experiment admits.

The codes live in the store, one item per code (`ALLOW#experiment`, code), and a flag on the
experiment's CONTROL item turns the list on: the connect function reads the flag with the pause
switch (the read it makes anyway) and, only when it is set, the one item of the participant who
connects. So a list of any length costs the connect path one read by key, and an experiment
without a list costs nothing. (The list used to be a stack parameter in every function's
environment, which Lambda caps at 4 KB: a few hundred codes.)

Removing codes never opens an experiment: an allowlist emptied by `remove` admits nobody;
`clear` removes the list and the flag, and anyone with a valid token is admitted again.

A file holds one code per line (surrounding blanks, empty lines and lines starting with # are
skipped; a UTF-8 byte-order mark is fine). It is read twice, streaming, so files of any size use
little memory: first every line is checked (a bad line stops the command, naming the line,
before anything is written), then the codes are written in batches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from ..tickets import valid_code
from . import OpsError
from .targets import Target

BATCH = 500  #: codes per store call (DynamoDB writes them 25 to a request)
_RULE = "1 to 64 characters of A-Z a-z 0-9 _ . : -, as in the connect tokens"


def experiment_name(value: str) -> str:
    """--experiment for allowlists: a name a token can carry, or the list could never match."""
    if not valid_code(value):
        raise argparse.ArgumentTypeError(f"--experiment must be {_RULE}, not {value!r}")
    return value


def codes_in(path: Path, batch: int = BATCH) -> Iterator[list[str]]:
    """The file's codes, `batch` at a time; OpsError (exit 2) naming the first bad line. Read as
    bytes and decoded line by line, so a line that is not UTF-8 is named too."""
    try:
        with path.open("rb") as lines:
            codes: list[str] = []
            for number, raw in enumerate(lines, 1):
                try:
                    code = (raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw).decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise OpsError(f"{path} line {number}: not UTF-8 text; nothing was changed", 2) from None
                if not code or code.startswith("#"):
                    continue
                if not valid_code(code):
                    shown = code if len(code) <= 40 else code[:40] + "..."
                    hint = " (one code per line, no commas)" if "," in code or ";" in code else ""
                    raise OpsError(f"{path} line {number}: {shown!r} is not a participant code ({_RULE}){hint}; "
                                   "nothing was changed", 2)
                codes.append(code)
                if len(codes) == batch:
                    yield codes
                    codes = []
            if codes:
                yield codes
    except OSError as exc:
        raise OpsError(f"cannot read {path}: {exc.strerror}; nothing was changed", 2) from None


def _batches(args: argparse.Namespace) -> Iterator[list[str]]:
    """The codes named on the command line, then the file's, in batches."""
    named = [args.codes[i : i + BATCH] for i in range(0, len(args.codes), BATCH)]
    return chain(named, codes_in(args.file) if args.file else ())


def _checked(args: argparse.Namespace) -> int:
    """Check every code before any is written; how many were given (repeats included)."""
    for code in args.codes:
        if not valid_code(code):
            raise OpsError(f"{code!r} is not a participant code ({_RULE}); nothing was changed", 2)
    if not args.codes and not args.file:
        raise OpsError(f"allowlist {args.action}: name the codes, or --file PATH (one code per line)", 2)
    return sum(len(batch) for batch in _batches(args))


def cmd_add(args: argparse.Namespace, target: Target) -> int:
    given = _checked(args)
    for batch in _batches(args):
        target.store.add_to_allowlist(args.experiment, batch)
    print(f"experiment {args.experiment!r}: {given:,} codes added to its allowlist (a code already on it stays "
          f"once); only the participants on it can connect [{target.where}]")
    return 0


def cmd_remove(args: argparse.Namespace, target: Target) -> int:
    given = _checked(args)
    for batch in _batches(args):
        target.store.remove_from_allowlist(args.experiment, batch)
    empty = next(iter(target.store.allowlist(args.experiment, page_size=1)), None) is None
    on = target.store.read_controls(args.experiment).allowlist
    state = ("; the allowlist is empty and stays on: nobody can connect (`allowlist clear` admits anyone again)"
             if on and empty else "")
    print(f"experiment {args.experiment!r}: {given:,} codes removed from its allowlist{state} [{target.where}]")
    return 0


def cmd_list(args: argparse.Namespace, target: Target) -> int:
    """The codes on stdout, one a line (for files and pipes); what they mean on stderr."""
    count = 0
    for count, code in enumerate(target.store.allowlist(args.experiment), 1):
        print(code)
    if not target.store.read_controls(args.experiment).allowlist:
        summary = "has no allowlist: anyone with a valid token can connect"
    elif count == 0:
        summary = "has an empty allowlist: nobody can connect (`allowlist clear` admits anyone again)"
    else:
        summary = f"admits the {count:,} codes on its allowlist, nobody else"
    print(f"experiment {args.experiment!r} {summary} [{target.where}]", file=sys.stderr)
    return 0


def cmd_clear(args: argparse.Namespace, target: Target) -> int:
    removed = target.store.clear_allowlist(args.experiment)
    print(f"experiment {args.experiment!r}: allowlist cleared ({removed:,} codes removed); anyone with a valid "
          f"token can connect again [{target.where}]")
    return 0


#: (name, run, help, description) of each action, for the parser in cli.py.
ACTIONS = (
    ("add", cmd_add, "add codes (and turn the allowlist on)",
     "Add participant codes to the experiment's allowlist; from then on only the codes on it can connect "
     "(others are refused with 403 participant_not_allowed). Codes come from the command line and/or --file "
     "(one a line, # comments); every code is checked before any is written."),
    ("remove", cmd_remove, "remove codes (the allowlist stays on)",
     "Remove participant codes from the experiment's allowlist. The allowlist stays on: once empty it admits "
     "nobody; `clear` removes it."),
    ("list", cmd_list, "print the codes, one a line",
     "Print the experiment's codes on stdout, one a line, and whether the allowlist is on, on stderr."),
    ("clear", cmd_clear, "remove every code and the allowlist itself",
     "Remove every code and turn the allowlist off: anyone with a valid token can connect again."),
)
