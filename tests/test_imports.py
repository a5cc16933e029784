"""The package's import graph has no cycle, and `python -m jaxmnist.train` runs each module once."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmnist"


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: what runs only when the file is the program."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The jaxmnist modules `path` imports anywhere: at the top, inside functions and
    classes, but not in its `__main__` block (which runs only as the program, after its
    module is complete, so cannot close a cycle)."""
    found = set()

    def visit(node):
        if _is_main_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("jaxmnist."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = node.module.split(".")[0] if node.module else None
            elif node.module == "jaxmnist":
                base = None
            elif node.module and node.module.startswith("jaxmnist."):
                base = node.module.split(".")[1]
            else:
                base = ""
            if base is None:
                found.update(a.name for a in node.names if a.name in modules)
            elif base:
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & modules


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {m: imported_modules(PACKAGE / f"{m}.py", modules) - {m} for m in sorted(modules)}


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
    assert {"train", "steps", "parallel", "rundir", "train_cli"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # The state and steps import neither the loop, the mesh, the run directory nor a CLI.
    assert not graph["steps"] & {"train", "parallel", "rundir", "train_cli", "cli"}


def test_the_cycle_finder_finds_a_cycle_the_walk_would_see(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    (tmp_path / "x.py").write_text(
        "from jaxmnist import y\n"
        "def f():\n    from jaxmnist.z import g\n"
        "if __name__ == '__main__':\n    import jaxmnist.w\n")
    assert imported_modules(tmp_path / "x.py", {"y", "z", "w"}) == {"y", "z"}


def test_python_m_jaxmnist_train_executes_the_loop_module_once():
    # With the file run as __main__, a second import of jaxmnist.train would execute it
    # again (and the process would hold two TrainingDiverged classes): -X importtime
    # lists every module imported.
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "jaxmnist.train", "--summary",
                        "--recipe", "tiny"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "total" in r.stdout and "3,622" in r.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")]
    assert "jaxmnist.steps" in imported and "jaxmnist.train_cli" in imported
    assert "jaxmnist.train" not in imported
