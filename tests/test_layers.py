"""The layer order of the packages, stated once (ORDER, lowest first), and the import graph it allows.

    rewards < data_gen < configs < actors < learner < cluster < bench

A module imports only its own package and the packages to its left, at module level or inside a function
(a function-level import is still an arrow; it only runs later). Why this order:
- `rewards/`: pure reward, judge and advantage functions; they import no other layer.
- `data_gen/`: data, models, the crop geometry and prompts, MCTS and the chains built from it; it scores with
  `rewards`.
- `configs/`: the schemas of every job; they import `data_gen`'s search and benchmark settings (MCTS's config,
  the benchmark list), so `configs` sits above `data_gen`, and every layer above may read a config.
- `actors/`: the rollout side (vLLM engines, episodes, the trajectory record, weight loading, the teacher VLM).
- `learner/`: the training side. It consumes the actors' trajectory record and sends weights in the format
  their receivers read (`actors.shm`, `actors.weights`), so `learner` sits above `actors`; the actors never
  import the learner.
- `cluster/`: drivers, jobs and the CLI wiring the layers together on Ray.
- `bench/`: benchmarks, which may drive anything.
Within the repository no module imports itself back through others: the second test looks for a cycle in the
graph of module-to-module imports (within a package as well as across).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["rewards", "data_gen", "configs", "actors", "learner", "cluster", "bench"]


def module_name(path: Path) -> str:
    """`actors/zoom.py` -> `actors.zoom`; a package's `__init__.py` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the ordered packages, by dotted name."""
    return {module_name(p): p for pkg in ORDER for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, dotted target, the statement as written) for every import in `path`, at module level or in a
    function. `from a import b` gives `a.b` (b may be a module or a name in a); relative imports are resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, f"import {a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            written = f"from {'.' * node.level}{node.module or ''} import "
            out += [(node.lineno, f"{base}.{a.name}", written + a.name) for a in node.names]
    return out


def test_every_package_is_placed_in_the_order():
    """A new top-level package must be given its place in ORDER, or the rules below would not see it."""
    packages = {d.name for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and any(d.glob("*.py"))}
    unplaced = packages - set(ORDER) - {"tests"}
    assert not unplaced, f"packages with no place in ORDER: {sorted(unplaced)}; add them to tests/test_layers.py"


@pytest.mark.parametrize("package", ORDER)
def test_no_import_runs_up_the_order(package):
    """Each import of a module in `package` names its own package or one to its left in ORDER."""
    rank = ORDER.index(package)
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target, written in imports(path):
            top = target.split(".")[0]
            if top == "tests" or (top in ORDER and ORDER.index(top) > rank):
                bad.append(f"{path.relative_to(ROOT)}:{line}: `{written}` ({package} is below {top}; "
                           f"order: {' < '.join(ORDER)})")
    assert not bad, "imports that run up the layer order:\n" + "\n".join(bad)


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {module it imports: "file:line"}, over the modules of the ordered packages. `from a import b`
    is an arrow to `a.b` when that is a module, else to `a`."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        edges = {}
        for line, target, _ in imports(path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(target, f"{path.relative_to(ROOT)}:{line}")
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str]:
    """One cycle of `graph` as [a, b, ..., a], or [] (iterative depth-first search, three colours)."""
    state, parent = {}, {}  # state: 1 on the current path, 2 done
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:  # back on the current path: child -> ... -> node -> child
                path = [node]
                while path[-1] != child:
                    path.append(parent[path[-1]])
                return path[::-1] + [child]
            elif child not in state:
                state[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph[child]))))
    return []


def test_no_import_cycle():
    """No module reaches itself through the modules it imports (module-level and function-level imports)."""
    graph = import_graph()
    cycle = find_cycle(graph)
    arrows = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle:\n" + "\n".join(arrows)


def test_the_cycle_finder_reports_a_cycle_and_passes_a_dag():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "", "c": ""}, "b": {"c": ""}, "c": {}}) == []
    assert find_cycle({"a": {"a": ""}}) == ["a", "a"]
