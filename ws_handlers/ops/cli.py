"""`chat-ops` / `python -m ws_handlers.ops`: one entry point, a subcommand per task.

Thin: parse, open the target, call the store or the export and status modules, print.
Bad input and failures end in one line on stderr and a non-zero exit (2: bad input,
1: refused or failed, 130: interrupted), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from ..store import Deleted, StoreThrottled
from . import OpsError, allowlist, export, settings, studies
from .status import Watch, describe_budget, render
from .targets import Target, add_arguments, aws_errors, opened

PROG = "chat-ops"


class _Help(argparse.HelpFormatter):
    """Defaults shown where there is one worth showing (not for flags or absent options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_:
            help_ += " (default: %(default)s)"
        return help_


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _name(what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        return value
    return parse


def _budget(value: str) -> int:
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"the budget must be a whole number of tokens, not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"the budget must be 0 (unlimited) or more tokens, not {number}")
    return number


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, not {value}")
    return number


# -- the subcommands --------------------------------------------------------------------------------
def cmd_pause(args: argparse.Namespace, target: Target) -> int:
    return _switch(args, target, paused=True)


def cmd_resume(args: argparse.Namespace, target: Target) -> int:
    return _switch(args, target, paused=False)


def _switch(args: argparse.Namespace, target: Target, paused: bool) -> int:
    target.store.set_controls(args.experiment, paused=paused)
    service = target.store.read_controls(None)
    if args.experiment is None:
        what = "the service" + (": new connections and messages are refused (code `paused`); "
                                "open sockets stay open" if paused else " is running")
    else:
        what = f"experiment {args.experiment!r}" + (
            ": new messages are refused (code `paused`)" if paused else " is running")
        if not paused and service.paused:
            what += ", but the whole service is still paused (`resume` without --experiment lifts that)"
    print(f"{'paused' if paused else 'resumed'} {what} [{target.where}]")
    return 0


def cmd_budget(args: argparse.Namespace, target: Target) -> int:
    if args.set is not None or args.clear:
        target.store.set_controls(args.experiment, token_budget=args.set, clear_budget=args.clear)
    controls = target.store.read_controls(args.experiment)
    budget = describe_budget(controls.tokens_used, controls.token_budget, target.default_budget)
    print(f"experiment {args.experiment!r}: {budget} [{target.where}]")
    return 0


def cmd_status(args: argparse.Namespace, target: Target) -> int:
    watch = Watch(target.store, target.where, args.experiment, args.session, args.active_minutes * 60,
                  target.default_budget)
    refreshes = args.count or (0 if args.watch else 1)  # 0: until Ctrl-C
    live = args.watch and not args.json and sys.stdout.isatty()
    with _live(live) as show:
        done = 0
        while True:
            snapshot = watch.snapshot(time.time())
            if args.json:
                print(json.dumps(snapshot.to_dict()), flush=True)
            else:
                show(render(snapshot, args.active_minutes))
            done += 1
            if refreshes and done >= refreshes:
                return 0
            time.sleep(args.interval)


@contextlib.contextmanager
def _live(enabled: bool) -> Iterator[Callable[[str], None]]:
    """Redraw in place on a terminal (rich), else print each refresh after the last."""
    if not enabled:
        yield lambda text: print(text + "\n", flush=True)
        return
    from rich.live import Live
    from rich.text import Text

    with Live(Text(""), auto_refresh=False) as live:
        yield lambda text: live.update(Text(text), refresh=True)


def cmd_export(args: argparse.Namespace, target: Target) -> int:
    chats, total = export.count(target.store, args.experiment, args.session)
    if chats == 0:
        scope = f"experiment {args.experiment!r}" + (f", session {args.session!r}" if args.session else "")
        raise OpsError(f"no chats in {scope} at {target.where}: nothing exported (check the name)")
    bar = not args.quiet and sys.stderr.isatty()
    to_stdout = args.output == "-"
    with _output(args) as out, _progress(total, bar) as advance:
        records = export.rows(target.store, args.experiment, args.session, advance=advance)
        written = (export.write_jsonl(records, out) if args.format == "jsonl"
                   else export.write_csv(records, out, raw=args.raw_csv))
    if not args.quiet:
        where = "stdout" if to_stdout else args.output
        print(f"exported {written:,} messages of {chats:,} chats to {where}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(args: argparse.Namespace) -> Iterator[Any]:
    if args.output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(args.output)
    if path.is_dir():
        raise OpsError(f"{path} is a directory: name a file", 2)
    if not path.parent.is_dir():
        raise OpsError(f"no directory {path.parent} for {path}", 2)
    if path.exists() and not args.force:
        raise OpsError(f"{path} exists: pass --force to replace it", 2)
    with export.atomic_file(path) as out:
        yield out


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TextColumn("messages"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("export", total=total)
        yield lambda n: bar.advance(task, n)


def cmd_delete_participant(args: argparse.Namespace, target: Target) -> int:
    store, scope = target.store, f"participant {args.participant!r} of experiment {args.experiment!r}"
    if args.session is not None:
        scope += f", session {args.session!r}"
    chats = list(store.experiment_chats(args.experiment, args.session, args.participant))
    sockets = [c for c in store.connections(args.experiment) if c.identity.participant == args.participant
               and (args.session is None or c.identity.session == args.session)]
    if not chats and not sockets:
        raise OpsError(f"nothing stored for {scope} at {target.where}: nothing deleted (check the names)")
    messages = sum(c.next_seq - 1 for c in chats)
    _confirm(f"Delete {scope} from {target.where}: {len(chats)} chats, {messages} messages, "
             f"{len(sockets)} connections?", args.participant, args.yes)
    _report(f"deleted {scope}", store.delete_participant(args.experiment, args.participant, args.session))
    return 0


def cmd_delete_experiment(args: argparse.Namespace, target: Target) -> int:
    store, scope = target.store, f"experiment {args.experiment!r}"
    chats, messages = export.count(store, args.experiment)
    sockets = sum(1 for _ in store.connections(args.experiment))
    own = store.read_controls(args.experiment)
    if not chats and not sockets and not (own.paused or own.tokens_used or own.token_budget is not None
                                          or own.allowlist):
        raise OpsError(f"nothing stored for {scope} at {target.where}: nothing deleted (check the name)")
    _confirm(f"Delete ALL of {scope} from {target.where}: {chats} chats, {messages} messages, {sockets} "
             "connections, its counters, controls and allowlist?", args.experiment, args.yes)
    _report(f"deleted {scope}", store.delete_experiment(args.experiment))
    return 0


def _confirm(question: str, answer: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise OpsError("refusing to delete without --yes: stdin is not a terminal to confirm on", 2)
    sys.stderr.write(f"{question}\nType {answer!r} to confirm: ")
    sys.stderr.flush()
    if sys.stdin.readline().strip() != answer:
        raise OpsError("not confirmed: nothing deleted")


def _report(what: str, deleted: Deleted) -> None:
    print(f"{what}: {deleted.chats} chats, {deleted.messages} messages, {deleted.connections} connections, "
          f"{deleted.records} other records (client message ids, counters, controls, allowlist codes)")


# -- the parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Operate the chat service: pause, budget, allowlists, status, export, delete "
        "(docs/operations.md).",
        epilog="environment variables (an option always wins):\n" + settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, run: Callable[..., int], help_: str, description: str,
                within: Any = commands) -> argparse.ArgumentParser:
        sub = within.add_parser(name, help=help_, description=description, formatter_class=_Help,
                                epilog="the target can also come from the environment: see chat-ops --help")
        sub.set_defaults(run=run)
        add_arguments(sub)
        return sub

    experiment = {"type": _name("--experiment"), "metavar": "NAME", "help": "the experiment, as named in the tokens"}
    for name, run, verb in (("pause", cmd_pause, "refuse"), ("resume", cmd_resume, "accept")):
        sub = command(name, run, f"{name} the service (the kill switch), or one experiment",
                      f"{name.capitalize()} the service: {verb} new connections and messages everywhere "
                      "(SERVICE/CONTROL), or with --experiment only that experiment's messages.")
        sub.add_argument("--experiment", **experiment | {"help": "only this experiment"})

    sub = command("budget", cmd_budget, "read or set an experiment's token budget",
                  "Show tokens used and the budget; --set or --clear it. Sends are refused with `budget_exhausted` "
                  "once tokens used reach the budget (checked before each model call).")
    sub.add_argument("--experiment", **experiment, required=True)
    change = sub.add_mutually_exclusive_group()
    change.add_argument("--set", type=_budget, metavar="TOKENS", help="the budget in tokens (prompt + completion); "
                        "0: unlimited for this experiment")
    change.add_argument("--clear", action="store_true", help="remove the experiment's budget: the deployment's "
                        "TOKEN_BUDGET applies again")

    def actions_of(name: str, help_: str, description: str) -> Any:
        """A command of several actions (`chat-ops allowlist add ...`): the actions' subparsers."""
        group = commands.add_parser(name, help=help_, description=description, formatter_class=_Help)
        return group.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)

    actions = actions_of("allowlist", "the participant codes an experiment admits",
                         "Restrict an experiment to invited participant codes: add, remove, list or clear its "
                         "allowlist (ACTION --help for each).")
    for name, run, help_, description in allowlist.ACTIONS:
        sub = command(name, run, help_, description, within=actions)
        sub.add_argument("--experiment", type=allowlist.experiment_name, metavar="NAME", required=True,
                         help="the experiment, as named in the tokens")
        if name in ("add", "remove"):
            sub.add_argument("codes", nargs="*", metavar="CODE", help="participant codes")
            sub.add_argument("--file", type=Path, metavar="PATH", help="a file of codes, one a line (# comments)")

    actions = actions_of("study", "studies for survey platforms: create, show, pause, export ...",
                         "Register and run a study for Qualtrics, LimeSurvey or Prolific (docs/surveys.md): "
                         "ACTION --help for each.")
    for name, run, help_, description in studies.ACTIONS:
        sub = command(name, run, help_, description, within=actions)
        if name == "create":
            sub.add_argument("file", type=Path, metavar="FILE", help="the study's TOML file")
            sub.add_argument("--replace-definition", action="store_true",
                             help="the study exists: replace its definition, keeping its seed, key and assignments")
            sub.add_argument("--allow-origin-mismatch", action="store_true",
                             help="register even though the deployment's AllowedOrigins lacks some of the study's "
                             "origins (a warning): you redeploy with them before participants enter")
            continue
        sub.add_argument("study", type=_name("the study id"), metavar="ID", help="the study's id")
        if name == "export":
            sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="the directory for the two files")
            sub.add_argument("--force", action="store_true", help="replace the files if they exist")
            sub.add_argument("--raw-csv", action="store_true", help="CSV text exactly as stored, formulas and all")

    sub = command("status", cmd_status, "connections, chats, messages, tokens and spend",
                  "Live status of the service, or of one experiment: its switch and budget, open connections, "
                  "chats (active: a message within --active-minutes, or a reply being written), messages, tokens "
                  "and the LLM spend at list prices (ws_handlers/ops/prices.py).")
    sub.add_argument("--experiment", **experiment | {"help": "this experiment (without: the service and connections)"})
    sub.add_argument("--session", type=_name("--session"), help="only this session of the experiment")
    sub.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    sub.add_argument("--interval", type=_positive, default=5.0, help="seconds between refreshes")
    sub.add_argument("--count", type=lambda v: int(_positive(v)), default=0, help="stop after this many refreshes (0: one, or with --watch "
                     "until Ctrl-C)")
    sub.add_argument("--active-minutes", type=_positive, default=10.0, help="a chat with a message this recent is active")
    sub.add_argument("--json", action="store_true", help="one JSON object per refresh")

    sub = command("export", cmd_export, "transcripts as CSV or JSONL, one row per message",
                  "One row per message: " + ", ".join(export.COLUMNS) + ". Streams chat by chat, page by page. "
                  "CSV cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) get a "
                  "leading apostrophe unless --raw-csv; JSONL is always exact.")
    sub.add_argument("--experiment", **experiment, required=True)
    sub.add_argument("--session", type=_name("--session"), help="only this session")
    sub.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    sub.add_argument("--output", "-o", default="-", metavar="FILE", help="a file (written complete or not at "
                     "all, readable by you only), or - for stdout")
    sub.add_argument("--force", action="store_true", help="replace --output if it exists")
    sub.add_argument("--raw-csv", action="store_true", help="CSV text exactly as stored, formulas and all")
    sub.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")

    sub = command("delete-participant", cmd_delete_participant, "delete one participant's data",
                  "A data-protection request: remove the participant's chats, messages, connections, counters and "
                  "allowlist code in the experiment (with --session, only that session's chats and connections). "
                  "Asks to confirm unless --yes. Tokens already spent stay counted.")
    sub.add_argument("--experiment", **experiment, required=True)
    sub.add_argument("--participant", type=_name("--participant"), required=True, metavar="CODE")
    sub.add_argument("--session", type=_name("--session"), help="only the participant's chats in this session")
    sub.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")

    sub = command("delete-experiment", cmd_delete_experiment, "delete an entire experiment's data",
                  "Remove every chat, message, connection, counter, control and allowlist code of the experiment. "
                  "Asks to confirm (type the experiment's name) unless --yes.")
    sub.add_argument("--experiment", **experiment, required=True)
    sub.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    return parser


@contextlib.contextmanager
def _failures(where: str) -> Iterator[None]:
    with aws_errors(where):
        try:
            yield
        except sqlite3.Error as exc:
            raise OpsError(f"{where}: {exc}") from None
        except StoreThrottled as exc:
            raise OpsError(f"{where} is busy ({exc}); try again in a moment") from None


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is returned (`--help` and usage errors included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        with opened(args) as target, _failures(target.where):
            return args.run(args, target)
    except OpsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.command == "status":  # how a watch ends
            return 0
        print(f"{PROG}: interrupted" + ("; nothing written" if args.command == "export" else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `chat-ops export ... | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, with what it was
        print(f"{PROG}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

