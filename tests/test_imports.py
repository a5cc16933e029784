"""The package's import graph has no cycle, and `python -m jaxmnist.train` runs each module once."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmnist"


def _names(dotted: str, modules: set[str]) -> set[str]:
    """The package's modules that importing jaxmnist.`dotted` loads: it and its parents
    (importing train.__main__ runs train's __init__ first)."""
    parts = dotted.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & modules


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The jaxmnist modules `path` imports anywhere: at the top, inside functions and
    classes, and in its `if __name__ == "__main__":` block too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxmnist."):
                    found |= _names(a.name.removeprefix("jaxmnist."), modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module == "jaxmnist":  # from jaxmnist import x, y
                for a in node.names:
                    found |= _names(a.name, modules)
            elif node.module and node.module.startswith("jaxmnist."):
                base = node.module.removeprefix("jaxmnist.")
                found |= _names(base, modules)
                for a in node.names:  # from jaxmnist.train import __main__
                    found |= _names(f"{base}.{a.name}", modules) - _names(base, modules)
    return found & modules


def module_files() -> dict[str, Path]:
    """Each module of the package by its dotted name under jaxmnist (a package by its
    own name, for its __init__.py)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            files[".".join(parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imported_modules(path, set(files)) - {m} for m, path in sorted(files.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def walk(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in graph:
        if start not in state and (cycle := walk(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"train", "train.__main__", "steps", "parallel", "rundir"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # The state and steps import neither the loop, the mesh, the run directory nor a CLI.
    assert not graph["steps"] & {"train", "parallel", "rundir", "train.__main__", "cli"}
    # The loop imports no command line; its command line imports the loop.
    assert not graph["train"] & {"train.__main__", "cli"}
    assert "train" in graph["train.__main__"]


def test_the_cycle_finder_finds_a_cycle_the_walk_would_see(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    (tmp_path / "x.py").write_text(
        "from jaxmnist import y\n"
        "def f():\n    from jaxmnist.z import g\n"
        "if __name__ == '__main__':\n    import jaxmnist.w\n"
        "from jaxmnist.p import __main__\n")
    assert imported_modules(tmp_path / "x.py", {"y", "z", "w", "p", "p.__main__"}) == {
        "y", "z", "w", "p", "p.__main__"}


def test_no_module_registers_itself_in_sys_modules():
    for path in module_files().values():
        assert "sys.modules[" not in path.read_text() and "sys.modules.setdefault" not in (
            path.read_text()), path


def test_python_m_jaxmnist_train_imports_the_loop_once_and_runs_its_command_line():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "jaxmnist.train", "--summary",
                        "--recipe", "tiny"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "total" in r.stdout and "3,622" in r.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")]
    assert imported.count("jaxmnist.train") == 1 and "jaxmnist.steps" in imported
