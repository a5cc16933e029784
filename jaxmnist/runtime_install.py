"""Install jaxmnist into a Python that already has JAX, keeping its jax, jaxlib and libtpu.

    python -m jaxmnist.runtime_install [pip install options ...]

Run from the project's root. A runtime such as Colab's comes with its own jax, jaxlib
and libtpu (or CUDA plugins), built to match its accelerator; a plain `pip install -e .`
could replace them with newer ones that no longer drive it. This installs the project
with a pip constraints file of the accelerator packages the runtime already has (as
`pip freeze` lists them), so pip keeps them, then checks that they are unchanged. If
the runtime's jax is older than the project's floor, it says so in one line and
changes nothing. Only the standard library is used: jaxmnist's dependencies need not
be installed yet.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxmnist.cli import print_error

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m jaxmnist.runtime_install"
# What a runtime builds for its accelerator: these must not move.
KEPT = ("jax", "jaxlib", "libtpu", "libtpu-nightly", "jax-cuda12-plugin",
        "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-rocm-plugin",
        "jax-rocm-pjrt")


def installed(names=KEPT) -> dict[str, str]:
    """{distribution name: version} of those of `names` installed in this Python."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '0.7.0.dev20250101' -> (0, 7, 0)."""
    numbers = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def jax_floor(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The `jax>=X` floor declared in pyproject.toml."""
    match = re.search(r'"jax>=([0-9][^",;\s]*)"', pyproject.read_text())
    if match is None:
        raise ValueError(f"{pyproject}: no jax floor found")
    return match.group(1)


def constraints(kept: dict[str, str]) -> str:
    """A pip constraints file that pins `kept` to their installed versions."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(kept.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--target", default=str(REPO), help="what to install (default: this "
                   "project, editable); e.g. '.[dev]'")
    p.add_argument("--dry-run", action="store_true", help="print the constraints and the "
                   "pip command, change nothing")
    args, pip_args = p.parse_known_args(argv)

    before = installed()
    floor = jax_floor()
    if "jax" in before and release(before["jax"]) < release(floor):
        print_error(PROG, f"this Python has jax {before['jax']}, older than jaxmnist's "
                    f"floor {floor}; nothing was changed")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "keep.txt"
        pins.write_text(constraints(before))
        cmd = [sys.executable, "-m", "pip", "install", "-c", str(pins), *pip_args, "-e",
               args.target]
        if args.dry_run:
            print(constraints(before), end="")
            print(" ".join(cmd))
            return 0
        code = subprocess.run(cmd, cwd=REPO, env={**os.environ}).returncode
    if code:
        print_error(PROG, f"pip install failed (exit code {code}); the runtime's "
                    f"{', '.join(f'{k} {v}' for k, v in before.items()) or 'packages'} "
                    "were pinned, so they are unchanged")
        return code
    after = installed()
    moved = {k: (before.get(k), v) for k, v in after.items() if before.get(k, v) != v}
    if moved:
        print_error(PROG, "the install changed "
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in moved.items()))
        return 1
    print("jaxmnist installed; kept " + (", ".join(f"{k} {v}" for k, v in before.items())
                                          or "no preinstalled jax (a fresh one came with it)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
