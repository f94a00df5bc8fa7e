"""The rules of docs/architecture.md, checked on the source: the package has
no import circle, the library reaches no CLI, the loaders know no training,
and the C kernels reach no Python (only csrc/bind/ does)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "primaps"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking(node: ast.AST) -> bool:
    t = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING")
        or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"))


def _imports(name: str) -> set:
    """The primaps modules `name` imports, at any depth of its code (lazy
    imports inside functions count), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    base = name if _is_package(name) else name.rpartition(".")[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    pkg = base.split(".")
                    pkg = pkg[:len(pkg) - (child.level - 1)]
                    target = ".".join(pkg + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                # `from . import x` imports the submodule x when there is one
                found.update(f"{target}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    # a module's own packages are initialised before it: not an edge
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: _imports(name) for name in MODULES}


def _reaches(start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_import_graph_is_read():
    # the parser finds the edges it must (a wrong resolution would make the
    # rules below pass vacuously)
    assert "primaps.pipeline.training" in GRAPH["primaps.pipeline"]
    assert "primaps.em" in GRAPH["primaps.pipeline.training"]
    assert "primaps.pipeline" in GRAPH["primaps.cli"]
    assert "primaps.metrics" in GRAPH["primaps"]


def test_no_import_circle():
    circles = sorted(m for m in MODULES if m in _reaches(m))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_metrics_and_viz_are_apart():
    # the pictures take a report; the report knows no pictures
    assert "primaps.viz" not in _reaches("primaps.metrics")
    assert "primaps.viz" not in _reaches("primaps")


@pytest.mark.parametrize("name", sorted(m for m in MODULES
                                        if m not in ("primaps.cli", "primaps.__main__")))
def test_the_library_reaches_no_cli(name):
    assert "primaps.cli" not in _reaches(name)


TRAINING = ("primaps.em", "primaps._training", "primaps.probe", "primaps.pipeline",
            "primaps.cli", "primaps.metrics")


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("primaps.datasets")))
def test_loaders_know_no_training(name):
    reached = _reaches(name)
    bad = sorted(m for m in reached if m.startswith(TRAINING))
    assert not bad, f"{name} reaches {bad}"


KERNELS = sorted(p for p in (ROOT / "csrc").glob("*") if p.suffix in (".c", ".h"))


def test_kernels_reach_no_python():
    assert len(KERNELS) >= 10
    include = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
    for p in KERNELS:
        heads = include.findall(p.read_text(encoding="utf-8"))
        bad = [h for h in heads if h.startswith(("Python", "numpy/", "bind/", "structmember"))]
        assert not bad, f"{p.relative_to(ROOT)} includes {bad}"
    # the binding does include them
    heads = include.findall((ROOT / "csrc" / "bind" / "common.h").read_text(encoding="utf-8"))
    assert any(h.startswith("Python") for h in heads)
