"""The import layering: `cluster/` (drivers, jobs, CLI) sits on top and nothing below imports it; the config
schemas (`configs/`) import no layer that imports them, so every layer may import them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BELOW = {"actors": {"cluster"}, "learner": {"cluster"}, "rewards": {"cluster", "actors", "learner"},
         "data_gen": {"cluster", "learner"}, "configs": {"cluster", "actors", "learner"}}


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(BELOW))
def test_no_import_runs_back_up(package):
    bad = {f"{p.relative_to(ROOT)} imports {sorted(imported(p) & BELOW[package])}"
           for p in (ROOT / package).glob("*.py") if imported(p) & BELOW[package]}
    assert not bad, bad
