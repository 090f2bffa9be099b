"""The package layout: one room per role, imports that go one way, no circles.

    api  ->  run  ->  {train, checkpoint}  ->  report  ->  store  ->  {measure, config, runtime, logs}

(and everything may use ``tasks`` and ``models``, which never import ``probes``). A module may
import its own room and any room below it; two rooms on one level never import each other.
Every import is checked, also one inside a function; project imports must sit at the top of the
file (function-local imports are for heavy third-party packages only).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {
    "api": 6,  # the public Python API: measures through checkpoint's Prober, used by no room
    "run": 5, "split_table": 6, "gguf_convert": 6,  # the entry point; the old names: its aliases
    "train": 4, "checkpoint": 4,
    "report": 3,
    "store": 2,
    "measure": 1, "config": 1, "runtime": 1, "logs": 1,
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages."""
    out = {}
    for pkg in ("probes", "tasks", "models"):
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported project module, at the top of the file) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.append((target, id(node) in top))
    return found


def room(name: str) -> str | None:
    """The room of a ``probes`` module (``train``, ``store``, ...); None outside ``probes``."""
    parts = name.split(".")
    return parts[1] if parts[0] == "probes" and len(parts) > 1 else None


def graph() -> dict[str, list[tuple[str, bool]]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_room_has_a_level():
    rooms = {room(m) for m in modules()} - {None}
    assert rooms <= set(LEVELS), f"rooms without a level: {rooms - set(LEVELS)}"


def test_imports_go_down_the_layers():
    bad = []
    for name, targets in graph().items():
        for target, _ in targets:
            src, dst = room(name), room(target)
            if name.split(".")[0] in ("tasks", "models") and target.startswith("probes"):
                bad.append(f"{name} -> {target} (tasks and models never import probes)")
            elif src is None or dst is None or target == "probes" or name == "probes":
                continue
            elif src == dst:
                continue
            elif LEVELS[dst] >= LEVELS[src]:
                bad.append(f"{name} -> {target} ({src} level {LEVELS[src]}, {dst} level {LEVELS[dst]})")
    assert not bad, "imports that go up or across the layers:\n" + "\n".join(bad)


def test_no_import_circles():
    edges = {name: {t for t, _ in targets} for name, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_project_imports_sit_at_the_top():
    inner = [f"{name} -> {target}" for name, targets in graph().items()
             for target, at_top in targets if not at_top]
    assert not inner, "project imports inside functions:\n" + "\n".join(inner)


def test_no_module_is_too_long():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk finds an import inside a function, resolved from a relative import."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from ..train import loop\n")
    found = imports("probes.measure.mod", f, {"probes.train.loop", "probes.train"})
    assert found == [("probes.train.loop", False)]
