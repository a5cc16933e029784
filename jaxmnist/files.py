"""Files written so that a failure leaves nothing half-written, and says why in one line.

Every file jaxmnist writes goes through `replace_atomically` (a temporary file beside the
target, renamed over it when complete), after `check_writable_dir` has refused a path
that cannot be written before any work starts. A write that fails midway (a full disk, a
file system turned read-only) raises `WriteError`, whose message names the path and the
reason in words (`reason`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class PathError(ValueError):
    """A path that cannot be used as asked (bad input: checked before any work)."""


class WriteError(OSError):
    """Writing `path` failed: the message names the path, the reason in words and, where
    given, what to do next (`advice`)."""

    def __init__(self, path: str | os.PathLike, cause: BaseException, advice: str = ""):
        self.path, self.cause, self.advice = str(path), cause, advice
        super().__init__(f"cannot write {self.path}: {reason(cause)}"
                         + (f"; {advice}" if advice else ""))

    def __str__(self) -> str:  # OSError's own would show its errno fields instead
        return self.args[0]


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "the directory is gone",
    errno.EIO: "an input/output error (a failing disk?)",
    errno.EFBIG: "the file is too large for the file system",
}


def reason(error: BaseException) -> str:
    """A write error in words: 'no space left on the device', 'the file system is
    read-only', 'permission denied', ...; the error's own text otherwise. Also reads
    the errors that wrap an OSError's text without its errno (orbax's, TensorStore's)."""
    if isinstance(error, OSError) and error.errno in _REASONS:
        return _REASONS[error.errno]
    text = str(error)
    for code, words in _REASONS.items():
        if os.strerror(code) in text:
            return words
    if "RESOURCE_EXHAUSTED" in text:
        return _REASONS[errno.ENOSPC]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return text.splitlines()[0] if text else type(error).__name__


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Checks that `path` is, or can be created as, a writable directory. Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PathError(
            f"cannot create directory {str(path)!r}: {str(probe)!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(f"directory {str(probe)!r} is not writable")
    return path


def replace_atomically(path: str | os.PathLike, write) -> None:
    """`write(tmp)` to a temporary file beside `path` (same suffix, so that a plotting
    library knows the format), then renamed over `path`: a failure leaves `path` as it
    was and no temporary file behind; it raises WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """`text` written to `path` atomically (`replace_atomically`)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def append_line(path: str | os.PathLike, line: str) -> None:
    """`line` and a newline appended to `path`; a failed write (a full disk) is undone,
    so the file never ends in a partial line, and raises WriteError."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else None
    try:
        with path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        try:
            if size is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, size)
        except OSError:
            pass
        raise WriteError(path, e) from None
