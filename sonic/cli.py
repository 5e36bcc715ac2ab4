"""`python -m sonic COMMAND`: the command table and the one error boundary every command runs in.

Each command is a module of `sonic.commands` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`; those modules import nothing heavy until `run`. Errors a user can fix print
one line (`error: ...`) and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .devices import launched_by_torchrun, torchrun_rank
from .errors import Interrupted, failure_message

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    argv = _attach_negative_values(list(sys.argv[1:] if argv is None else argv), ("--face-box", "--sync"))
    _stop_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return guarded(lambda: args.run(args), debug=args.debug)


def guarded(run, *, debug: bool) -> int:
    """Run a command: a failure the user or the environment caused (see `errors.failure_message`)
    becomes one `error:` line and exit status 2; a bug keeps its traceback; `debug` shows all."""
    where = _rank_prefix()
    try:
        return run()
    except (KeyboardInterrupt, Interrupted) as exc:  # Ctrl-C, SIGTERM, or a cancel another rank reported
        if launched_by_torchrun():  # torchrun SIGTERMs the ranks still running: this one is already stopping
            _ignore_further_signals()
        reason = str(exc).strip() if isinstance(exc, Interrupted) else ""
        print(f"{where}interrupted{f' ({reason})' if reason else ''}: no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = failure_message(exc)
        if debug or message is None:
            raise
        print(f"{where}error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _ignore_further_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _rank_prefix() -> str:
    """"rank 1: " on the helper ranks of a torchrun job, whose lines interleave with rank 0's."""
    rank = torchrun_rank()
    return f"rank {rank}: " if rank else ""


def _attach_negative_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`--face-box -5,0,90,100` would read "-5,..." as an option: glue such values on with `=`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _stop_on_sigterm() -> None:
    """`kill`/`timeout` send SIGTERM: stop like Ctrl-C so partial outputs are removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


# Command name -> module of sonic.commands, in the order `--help` lists them.
COMMANDS = {
    "generate": "generate",
    "doctor": "doctor",
    "download": "download",
    "convert": "convert",
    "check-sync": "check_sync",
    "queue": "queue",
    "batch": "batch",
    "bench": "bench",
    "make-tiny-zoo": "make_tiny_zoo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sonic", description=f"Sonic talking heads {__version__}")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.commands.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.add_argument("--debug", action="store_true", help="show tracebacks")
        command.set_defaults(run=module.run)
    parser.set_defaults(debug=False)
    return parser
