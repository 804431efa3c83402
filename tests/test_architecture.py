"""The layout shows the data flow (issue 14): imports between alignlab's modules form no cycle, run
only downward through the stages, and never reach another module's private names.

The graph is read from the source with `ast` (every import, also those inside functions), so a
lazy import cannot hide a cycle. An import of a package (`from alignlab.data import x`) is an edge
to the package's `__init__`, which in turn imports its modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "alignlab"

# Lower tiers never import higher ones; the same tier may import itself when no cycle results.
TIERS = [
    ["errors", "safe_delete", "atomic", "cache", "output_dirs", "untrusted", "checks", "evidence", "yaml_input"],
    ["config", "trl_keys", "trl_settings", "data", "objectives"],
    ["models"],
    ["training", "evaluation"],
    ["world", "analysis"],
    ["study", "report", "bench"],
    ["cli", "cli_settings", "__main__"],
]
TIER_OF = {name: level for level, names in enumerate(TIERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every alignlab import in the file."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("alignlab")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("alignlab"):
                continue
            taken = []
            for alias in node.names:
                if f"{base}.{alias.name}" in known:  # `from alignlab import atomic`: the module itself
                    found.append((f"{base}.{alias.name}", []))
                else:
                    taken.append(alias.name)
            if taken:
                found.append((base, taken))
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = set(modules())
    edges: dict[str, set[str]] = {name: set() for name in known}
    private = []
    for name, path in modules().items():
        for target, names in imports(path, name, known):
            assert target in known, f"{name} imports {target}, which does not exist"
            if target != name:
                edges[name].add(target)
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and target != name]
    return edges, private


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alignlab"


def test_no_import_cycles():
    edges, _ = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_run_only_downward_through_the_stages():
    edges, _ = graph()
    upward = []
    for source, targets in edges.items():
        for target in targets:
            a, b = stage(source), stage(target)
            if "alignlab" in (a, b) or a == b:
                continue
            assert a in TIER_OF and b in TIER_OF, f"{a} or {b} has no tier: add it to TIERS"
            if TIER_OF[b] > TIER_OF[a]:
                upward.append(f"{source} -> {target}")
    assert not upward, "imports that climb to a higher stage:\n" + "\n".join(sorted(upward))


def test_no_module_imports_another_modules_private_names():
    _, private = graph()
    assert not private, "\n".join(sorted(private))


def test_the_checks_see_a_cycle_an_upward_import_and_a_private_name(tmp_path, monkeypatch):
    """The checks themselves: a planted package with each fault is caught."""
    fake = tmp_path / "alignlab"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from alignlab.data.b import _hidden\n")
    (fake / "data" / "b.py").write_text("def f():\n    from alignlab.data import a\n    from alignlab.study import s\n")
    (fake / "study").mkdir()
    (fake / "study" / "__init__.py").write_text("")
    (fake / "study" / "s.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges, private = graph()
    assert edges["alignlab.data.a"] == {"alignlab.data.b"} and "alignlab.data.a" in edges["alignlab.data.b"]
    assert private == ["alignlab.data.a imports alignlab.data.b._hidden"]
    for check in (test_no_import_cycles, test_imports_run_only_downward_through_the_stages):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} missed its planted fault")


def test_no_module_is_longer_than_about_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
