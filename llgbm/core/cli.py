"""One error path for every command (`python -m llgbm.run | zoo | generate | ddp | bench` and
`python -m geomlib.<seed>`): an expected error (bad input, a missing or unreadable file, a bad
config) prints one line on stderr, naming what is wrong and what would be right, and the command
exits with status 2; `--debug` shows the traceback instead. Paths are checked here before anything
heavy loads. The module imports nothing heavy, so a command's `--help` answers at once."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

class CommandError(ValueError):
    """An expected failure of a command (bad input); its message is one line for the user."""


# What a user's input or files can cause. A bug raises something else (or one of these with
# --debug showing where): it keeps its traceback.
EXPECTED = (CommandError, ValueError, LookupError, OSError)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the common `--debug` flag; the description (a module docstring) is
    printed as written."""
    return add_debug(argparse.ArgumentParser(prog=prog, description=description,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))


def add_debug(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--debug", action="store_true", help="on an error, show its traceback instead of one line")
    return p


def message(err: BaseException) -> str:
    """The error as one line: a KeyError without its quotes, an OSError with its file, newlines folded."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Call `main(argv)` and turn an expected error into one line on stderr and exit status 2
    (KeyboardInterrupt: 130). With `--debug` among the arguments the error propagates."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED as err:
        if "--debug" in argv:
            raise
        print(f"error: {message(err)}", file=sys.stderr)
        return 2


def input_file(path: str | Path, what: str) -> Path:
    """An existing, readable file, or a CommandError that says what was found instead."""
    path = Path(path)
    if not path.exists():
        raise CommandError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CommandError(f"{what} {path} is a directory, not a file: pass the file itself")
    return path


def output_dir(path: str | Path, what: str) -> Path:
    """A folder to write into: missing (it will be created) or an existing folder, not a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{what} {path} is an existing file: pass a folder (it is created if missing)")
    if not path.exists() and path.parent.exists() and not path.parent.is_dir():
        raise CommandError(f"{what} {path}: its parent {path.parent} is a file, not a folder")
    return path


def output_file(path: str | Path, what: str) -> Path:
    """A file to write: not an existing folder, its folder missing (it will be created) or a folder."""
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{what} {path} is a folder: pass a file name, as {path / 'report.json'}")
    output_dir(path.parent, f"{what}'s folder")
    return path
