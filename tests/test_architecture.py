"""The package's layering, as ``docs/architecture.md`` states it, checked on every module's imports.

Every ``import`` and ``from ... import`` of every module of ``codexdask`` — at module level, inside
functions and under ``TYPE_CHECKING`` alike — is read with :mod:`ast` and checked against
:data:`STAGES`: a module may import its own stage and the stages listed before it, never a later
one, and the imports between modules form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "codexdask"

#: The stages, lowest first. A module belongs to the first stage with a matching prefix
#: (``codexdask.store`` covers ``codexdask.store.slide``); the faces come last.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vocabulary", ("codexdask._version", "codexdask.errors", "codexdask.boxes",
                    "codexdask.layout", "codexdask.atomic", "codexdask.config",
                    "codexdask.hardware")),
    ("readers", ("codexdask.readers",)),
    ("store", ("codexdask.store",)),
    ("statistics", ("codexdask.statistics",)),
    ("postprocess", ("codexdask.postprocess",)),
    ("mesmer", ("codexdask.mesmer",)),
    ("segmenters", ("codexdask.segmenters",)),
    ("repair", ("codexdask.repair",)),
    ("seamless", ("codexdask.seamless",)),
    ("outputs", ("codexdask.outputs",)),
    ("synthetic", ("codexdask.synthetic",)),
    ("engine", ("codexdask.engine",)),
    ("quantification", ("codexdask.quantification",)),
    ("faces", ("codexdask.cli", "codexdask.demo", "codexdask.doctor", "codexdask.compat",
               "codexdask")),
)

#: Modules that may sit at the package root: the faces and the shared vocabulary.
ROOT_MODULES = {"__init__", "_version", "cli", "demo", "doctor", "compat", "errors", "config",
                "layout", "hardware", "atomic", "boxes"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES")


def imported_modules(module: str) -> set[str]:
    """The codexdask modules that ``module`` imports anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import name``: the submodule pkg.name if there is one, else pkg itself.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("codexdask") and target != module:
                found.add(target)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_has_a_stage():
    for module in MODULES:
        stage_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_stage_order(module):
    upward = sorted(t for t in GRAPH[module] if stage_of(t) > stage_of(module))
    assert not upward, (
        f"{module} ({STAGES[stage_of(module)][0]}) imports a later stage: "
        + ", ".join(f"{t} ({STAGES[stage_of(t)][0]})" for t in upward)
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one():
    # The checker itself: a cycle through a function-level import is a cycle.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_root_holds_only_faces_and_vocabulary():
    extra = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ROOT_MODULES)
    assert not extra, f"modules at the package root that belong in a stage folder: {extra}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_the_line_limit(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it"


def layout_names() -> tuple[set[str], set[str]]:
    """The names ``codexdask/layout.py`` spells: (distinctive, generic).

    Distinctive names (a file name, a store kind, a mask array) must not appear as a literal
    anywhere else; generic ones ("done", "tiles", ...) are ordinary words too, so they count only
    where they name a path or an array: beside ``/`` or as a subscript key.
    """
    from codexdask import layout

    values: set[str] = set()
    for name in dir(layout):
        if name.endswith(("_FILE", "_PICKLE", "_STORE", "_ZARR", "MANIFEST", "_KIND", "_DIR",
                          "_ARRAY", "_KEYS")) or name.startswith("DEMO_"):
            value = getattr(layout, name)
            values.update([value] if isinstance(value, str) else value)
    values.update(layout.MOSAIC_LABELS)
    distinctive = {v for v in values if any(c in v for c in "._-")}
    return distinctive, values - distinctive


def _docstring_ids(tree: ast.AST) -> set[int]:
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def test_layout_names_are_spelled_only_in_layout():
    distinctive, generic = layout_names()
    assert {"masks.zarr", "patches_metadata.csv", "run_manifest.json"} <= distinctive
    assert {"blocks", "done"} <= generic
    offenders = []
    for module, path in MODULES.items():
        if module == "codexdask.layout":
            continue
        tree = ast.parse(path.read_text())
        skip = _docstring_ids(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                operands = [node.left, node.right]
            elif isinstance(node, ast.Subscript):
                operands = [node.slice]
            else:
                operands = []
            for operand in operands:
                if isinstance(operand, ast.Constant) and operand.value in generic:
                    offenders.append(f"{module}:{operand.lineno} {operand.value!r}")
            if (isinstance(node, ast.Constant) and node.value in distinctive
                    and id(node) not in skip):
                offenders.append(f"{module}:{node.lineno} {node.value!r}")
    assert not offenders, "layout names spelled outside layout.py: " + ", ".join(offenders)


def test_the_weights_environment_variable_is_read_only_by_the_configuration():
    from codexdask.config import MODEL_PATH_ENV

    def names_it(node: ast.AST) -> bool:
        return ((isinstance(node, ast.Name) and node.id == "MODEL_PATH_ENV")
                or (isinstance(node, ast.Constant) and node.value == MODEL_PATH_ENV))

    readers = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            # os.environ.get(NAME), os.getenv(NAME), os.environ[NAME]
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get", "getenv") and node.args
                    and names_it(node.args[0])):
                readers.add(module)
            if isinstance(node, ast.Subscript) and names_it(node.slice):
                readers.add(module)
    assert readers == {"codexdask.config"}
