"""`from planner import ...`: the library a Python caller uses instead of the CLI.

It must stay importable without click (the CLI's) and without torch (the nodes'), and the
README's "Use from Python" example must run as printed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import planner
from planner.errors import HistoryError
from planner.history.corrected_plan import corrected_plan
from tests.builders import plan_for, record_for, reference_files, spec_with
from tests.paths import REPO


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = (
        f"{code}\nimport sys\n"
        "print(sorted(m for m in ('click', 'torch', 'submitit', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_library_name_imports_without_click_or_torch() -> None:
    names = ", ".join(planner.__all__)
    assert loaded_after(f"from planner import {names}") == []


@pytest.mark.slow
def test_importing_the_errors_imports_no_library() -> None:
    code = (
        "import sys, planner.errors\n"
        "print(sorted(m for m in sys.modules if m.startswith(('planner.', 'jobs', 'yaml'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['planner.errors']"


def test_the_api_lists_agree() -> None:
    """__all__, the lazy table and the names a type checker sees are the same set."""
    assert sorted(planner.__all__) == sorted(planner._API)
    tree = ast.parse(Path(planner.__file__).read_text(encoding="utf-8"))
    checked = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    assert checked == set(planner._API)
    for name, (module, attribute) in planner._API.items():
        assert getattr(planner, name) is getattr(__import__(module, fromlist=["_"]), attribute)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = planner.nothing  # type: ignore[attr-defined]


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from Python\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README: no python block under 'Use from Python'"
    return match.group(1)


def test_the_readme_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_files(tmp_path)  # run.yaml and cal.yaml, its calibration record
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "node(s)" in printed and "wrote" in printed
    assert (tmp_path / "runs" / "big" / "plan.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "big").glob("segment-*.sbatch"))


def test_a_plan_without_history_is_the_calibration_s(tmp_path: Path) -> None:
    spec = spec_with()
    planned = corrected_plan(spec, record_for(spec), None, "cal.yaml", history=tmp_path / "h")
    assert planned.plan == planned.model == plan_for(spec)
    assert not planned.corrected and planned.warning is None


def test_an_unreadable_history_plans_without_it_and_says_why(tmp_path: Path) -> None:
    spec = spec_with()
    # A folder where the database should be: sqlite cannot open it.
    planned = corrected_plan(spec, record_for(spec), None, "cal.yaml", history=tmp_path)
    assert planned.plan == planned.model
    assert planned.warning is not None
    assert planned.warning.endswith("; planned without the history's correction")
    with pytest.raises(HistoryError):
        planner.corrections_for(spec, None, tmp_path, record=record_for(spec))
