"""Command-line plumbing shared by every entry point: one-line errors, exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn


class UsageError(ValueError):
    """Bad input on the command line: reported as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def print_error(prog: str, message: str) -> None:
    """`prog: error: message`, one line on stderr: how every command reports a failure."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def fail(prog: str, message: str) -> NoReturn:
    print_error(prog, message)
    raise SystemExit(2)


def flag_message(error: ValueError) -> str:
    """The error's message, naming the flag where it is about a config field."""
    field = getattr(error, "field", None)
    if field is None:
        return str(error)
    return f"--{field.replace('_', '-')} {error.reason}"


def report(prog: str, error: Exception) -> int:
    """Prints the one stderr line for an error the library raised and returns the exit
    code: 2 for bad input (a ValueError: a config, a run directory, data, an image), 1
    otherwise (a diverged run, a disk that failed)."""
    print_error(prog, flag_message(error) if isinstance(error, ValueError) else str(error))
    return 2 if isinstance(error, ValueError) else 1


def _number(text: str, cast, what: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def whole_number(text: str) -> int:
    return _number(text, int, "a whole number")


def number(text: str) -> float:
    return _number(text, float, "a number")


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def architecture(text: str) -> str:
    """A `jaxmnist.models` layer string, e.g. 'c8 c16 p t8 v16 v16'."""
    # Imported here, not with this module: jaxmnist.runtime_install imports this module
    # in a Python that may not have flax yet (it is what installs it).
    from jaxmnist.models import ArchError, parse_arch

    try:
        parse_arch(text)
    except ArchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return " ".join(text.split())


def quiet_libraries() -> None:
    """Keeps the libraries' own log lines (TFDS and orbax log through absl) off stderr, so
    that a failure is the one line the command prints: orbax, for one, logs a failed
    background save with its traceback before the save's error reaches the command."""
    try:  # absl comes with TFDS; runtime_install imports this module before TFDS is there
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:  # pragma: no cover - absl comes with TFDS
        pass


class LogLines(logging.Handler):
    """The "jaxmnist" logger's records as lines on stderr: information as it is, a
    warning as `prog: warning: message` (a checkpoint that cannot be read, say)."""

    def __init__(self, prog: str, write=None):
        super().__init__()
        self.prog = prog
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def emit(self, record):
        message = record.getMessage()
        self.write(f"{self.prog}: warning: {message}" if record.levelno >= logging.WARNING
                   else message)


def log_to_stderr(prog: str, write=None) -> None:
    """Shows the "jaxmnist" logger's lines (`LogLines`) as `prog`'s: one handler per
    process, taken over by the command that runs now."""
    log = logging.getLogger("jaxmnist")
    for handler in [h for h in log.handlers if isinstance(h, LogLines)]:
        log.removeHandler(handler)
    log.addHandler(LogLines(prog, write))
    log.setLevel(logging.INFO)
    log.propagate = False
