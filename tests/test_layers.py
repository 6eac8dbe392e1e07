"""planner/'s packages import one way: each only the packages below it, in the order README
"Architecture" states; the shared basics at planner/'s top (errors, atomic, shell, ...) import
no package; jobs/ (the compute nodes' side) never imports planner/; and no test module imports
another (what tests share is in helper modules and tests/conftest.py).

Read from the source with ast, so every import counts: at module level, inside functions (the
CLI imports the library lazily, so importing it would miss most of its edges) and under
TYPE_CHECKING (a type is a dependency too). The same kind of guard as the torch-free check of
the login node (tests/test_api.py): a package that reaches up fails here, naming the edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.paths import REPO

# Bottom up. Packages on one layer are independent: neither imports the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("basics",),  # planner/*.py: errors, atomic, shell, units, clock, textwidth, ...
    ("spec",),
    ("slurm", "scaling"),
    ("calibration",),
    ("model",),
    ("runs",),
    ("eta",),
    ("followup",),
    ("history",),
    ("pages",),
    ("cli",),
)
BASICS = "basics"
API = "planner"  # planner/__init__.py: the library's names, imported on first use, above all


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # the imported module, absolute ("planner.model.plan")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every module ``path`` imports, wherever the import statement stands. ``from a import b``
    yields a.b where that is a module or package under ``root``, else a."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found = _exists(sub, root)
                yield Import(path, node.lineno, sub if found else base)


def _exists(module: str, root: Path) -> bool:
    where = root.joinpath(*module.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def owner(module: str, root: Path) -> str | None:
    """The layer's name a planner module belongs to; None outside planner/."""
    parts = module.split(".")
    if parts[0] != "planner":
        return None
    if len(parts) == 1:
        return API
    if (root / "planner" / parts[1] / "__init__.py").is_file():
        return parts[1]
    return BASICS


def rank_of(layers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {name: index for index, layer in enumerate(layers) for name in layer}


def below(layers: Sequence[Sequence[str]], rank: int) -> str:
    names = [name for layer in layers[:rank] for name in layer]
    return ", ".join(names) if names else "nothing"


def upward_imports(root: Path, layers: Sequence[Sequence[str]]) -> list[str]:
    """One line per import of planner/ that goes up or sideways (a package on its own layer or
    above, the library API, a package no layer names), as file:line."""
    ranks = rank_of(layers)
    found: list[str] = []
    for path in sorted((root / "planner").rglob("*.py")):
        source = owner(module_name(path, root), root)
        if source in (None, API):
            continue  # planner/__init__.py names every package lazily: it is the top
        for imp in imports_of(path, root):
            target = owner(imp.module, root)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(root)}:{imp.line}"
            if target == API:
                found.append(
                    f"{where} imports the library API (planner.__init__); import the owning "
                    "module instead"
                )
            elif source not in ranks or target not in ranks:
                missing = source if source not in ranks else target
                found.append(f"{where}: package {missing!r} has no layer in LAYERS")
            elif ranks[target] >= ranks[source]:
                found.append(
                    f"{where}: {source} imports {imp.module} ({target} is not below it; "
                    f"{source} may import {below(layers, ranks[source])})"
                )
    return list(dict.fromkeys(found))  # one line per statement, however many names it takes


def planner_imports_in(folder: Path, root: Path) -> list[str]:
    return [
        f"{imp.path.relative_to(root)}:{imp.line} imports {imp.module}"
        for path in sorted(folder.rglob("*.py"))
        for imp in imports_of(path, root)
        if owner(imp.module, root) is not None
    ]


def imports_between_test_modules(folder: Path, root: Path) -> list[str]:
    """One line per import of a test module (tests/test_*.py) by a test module: what tests
    share lives in helper modules (tests/builders.py, tests/processes.py, ...) and fixtures
    in tests/conftest.py, so that no test module's collection runs another's tests' set-up."""
    return [
        f"{imp.path.relative_to(root)}:{imp.line} imports {imp.module}"
        for path in sorted(folder.glob("test_*.py"))
        for imp in imports_of(path, root)
        if imp.module.split(".")[-1].startswith("test_") and imp.module.startswith("tests.")
    ]


def stated_order(layers: Sequence[Sequence[str]]) -> str:
    """The order as README "Architecture" states it, bottom up."""
    return " < ".join(", ".join(layer) for layer in layers)


def test_each_package_imports_only_those_below_it() -> None:
    assert upward_imports(REPO, LAYERS) == []


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in (REPO / "planner").glob("*/__init__.py")}
    assert packages == {name for layer in LAYERS for name in layer} - {BASICS}


def test_jobs_never_imports_planner() -> None:
    """The compute nodes' side stands alone: planner/ (the login node's) may import
    jobs.contract, never the other way."""
    assert planner_imports_in(REPO / "jobs", REPO) == []


def test_no_test_module_imports_another() -> None:
    assert imports_between_test_modules(REPO / "tests", REPO) == []


def test_the_readme_states_the_order() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    architecture = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    assert stated_order(LAYERS) in architecture


def write(root: Path, relative: str, text: str = "") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_check_names_every_kind_of_upward_import(tmp_path: Path) -> None:
    """The guard can fail: a lazy import in a function, one under TYPE_CHECKING, a relative
    one and one from a layer's neighbour are all found, each named by file and line."""
    for package in ("spec", "slurm", "scaling", "model", "cli"):
        write(tmp_path, f"planner/{package}/__init__.py")
    write(tmp_path, "planner/__init__.py")
    write(tmp_path, "planner/errors.py", "from planner.spec import load\n")
    write(tmp_path, "planner/spec/load.py", "import json\nfrom planner import errors\n")
    write(tmp_path, "planner/cli/plan.py", "def plan():\n    from planner.model import plan\n")
    write(
        tmp_path,
        "planner/model/plan.py",
        "from typing import TYPE_CHECKING\n"
        "from planner.spec.load import x\n"
        "if TYPE_CHECKING:\n    from planner.cli.plan import plan\n"
        "def late():\n    from ..cli import plan\n",
    )
    write(tmp_path, "planner/slurm/queue.py", "import planner.scaling.ring\n")
    write(tmp_path, "planner/scaling/ring.py", "from planner import make_plan\n")
    layers = (("basics",), ("spec",), ("slurm", "scaling"), ("model",), ("cli",))
    found = upward_imports(tmp_path, layers)
    assert found == [
        "planner/errors.py:1: basics imports planner.spec.load (spec is not below it; "
        "basics may import nothing)",
        "planner/model/plan.py:4: model imports planner.cli.plan (cli is not below it; "
        "model may import basics, spec, slurm, scaling)",
        "planner/model/plan.py:6: model imports planner.cli.plan (cli is not below it; "
        "model may import basics, spec, slurm, scaling)",
        "planner/scaling/ring.py:1 imports the library API (planner.__init__); import the "
        "owning module instead",
        "planner/slurm/queue.py:1: slurm imports planner.scaling.ring (scaling is not below "
        "it; slurm may import basics, spec)",
    ]
    write(tmp_path, "jobs/train.py", "def main():\n    import planner.errors\n")
    assert planner_imports_in(tmp_path / "jobs", tmp_path) == [
        "jobs/train.py:2 imports planner.errors"
    ]


def test_the_check_finds_a_test_module_importing_another(tmp_path: Path) -> None:
    write(tmp_path, "tests/__init__.py")
    write(tmp_path, "tests/builders.py", "SPEC = {}\n")
    write(tmp_path, "tests/test_b.py", "from tests.builders import SPEC\n")
    write(
        tmp_path,
        "tests/test_a.py",
        "import tests.test_b\nfrom tests.builders import SPEC\n"
        "def test_x():\n    from tests import test_b\n",
    )
    assert imports_between_test_modules(tmp_path / "tests", tmp_path) == [
        "tests/test_a.py:1 imports tests.test_b",
        "tests/test_a.py:4 imports tests.test_b",
    ]
