"""The ``singleshot`` command line.

Each subcommand lives in ``singleshot/commands/<name>.py`` and defines ``HELP`` (one line),
``EXAMPLES`` (shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause are raised as :class:`singleshot.errors.UserError` and printed as one
sentence; anything else is a bug in singleshot and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from singleshot import __version__
from singleshot.errors import UserError

# Subcommand name -> module under singleshot.commands. Order is the order of `singleshot --help`.
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "detect": "detect",
    "export": "export",
    "demo": "demo",
    "models": "models",
    "synth": "synth",
    "check-data": "check_data",
    "default-boxes": "default_boxes",
    "bench": "bench",
}

MAIN_EXAMPLES = """\
examples:
  singleshot demo                                   # synthesise data, train, evaluate, draw: minutes on a CPU
  singleshot synth data/shapes --images 500         # a synthetic VOC-style data set
  singleshot train --data data/shapes --out runs/a  # train the default small model
  singleshot eval runs/a/best.pt --data data/shapes --split test
  singleshot detect runs/a/best.pt photo.jpg --out detections/
  singleshot export runs/a/best.pt --out model.onnx
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with "did you mean" for misspelt options and subcommands, and exit status 2.

    argparse reports a subcommand's unknown options from the top-level parser, which knows only its own
    options; :meth:`parse_args` hands them to the subcommand's parser instead, so the hint names an
    option of that command and points to its ``--help``.
    """

    commands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(self, "commands", {}).get(getattr(namespace, "command", None), self)
            command._fail_unrecognized(extras)
        return namespace

    def _fail_unrecognized(self, extras: list[str]):
        known = [s for action in self._actions for s in action.option_strings]
        hint = ""
        for word in extras:
            name = word.split("=", 1)[0]
            if name.startswith("-") and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                if close:
                    hint = f" Did you mean {close[0]}?"
                    break
        self._exit_with(f"unrecognized arguments: {' '.join(extras)}", hint)

    def error(self, message: str):  # noqa: D401 - argparse API
        hint = ""
        if "invalid choice" in message:
            choice = message.split("'", 2)[1] if "'" in message else ""
            choices = []
            for action in self._actions:
                if action.choices:
                    choices.extend(action.choices)
            close = difflib.get_close_matches(choice, [str(c) for c in choices], n=1)
            if close:
                hint = f" Did you mean {close[0]}?"
        self._exit_with(message, hint)

    def _exit_with(self, message: str, hint: str):
        self.exit(2, f"{self.prog}: error: {message}.{hint} See '{self.prog} --help'.\n")


def _load(name: str):
    return importlib.import_module(f"singleshot.commands.{COMMANDS[name]}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="singleshot",
        description="SSD, the Single Shot MultiBox Detector: train, evaluate, detect, export.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"singleshot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    parser.commands = {}
    for name in COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:  # a command not written yet
            if exc.name != f"singleshot.commands.{COMMANDS[name]}":
                raise
            continue
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        parser.commands[name] = cmd
        cmd.set_defaults(_run=module.run)
    return parser


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing large blocks back to the system.

    PyTorch's CPU tensors come from malloc; by default a block above 128 KB - 32 MB is mapped afresh and
    unmapped when freed, so every large temporary of every step is paid again in page faults (measured on
    this project's VM: ~3 us per 4 KB page, 0.6 s of a 6.8 s SSD300 training step at batch 8). The
    ``singleshot`` command calls this for its own process (and the data-loader workers it forks), except
    ``singleshot bench`` without ``--keep-freed-memory``; the library itself never changes the process.
    Returns whether the settings were taken (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    if getattr(args, "keep_freed_memory", True):  # bench times a default process unless asked
        keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"singleshot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"singleshot {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
