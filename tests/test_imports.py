"""The package's import graph has no cycles (issue 12): layers import downwards only.

Every ``import`` statement counts, including those inside functions: a lazy import
hides a cycle from Python's import machinery but not from a reader, who then cannot
understand one module without the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import diver

PACKAGE = Path(diver.__file__).resolve().parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package's own children excluded:
    ``diver.model/__init__`` re-exporting its submodules is not a cycle with them)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name and not target.startswith(name + "."):
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    # diver.launch.slurm imports diver.launch.site at module level; diver.cli imports
    # diver.launch.cli inside a function, which must count too.
    assert "diver.launch.site" in graph["diver.launch.slurm"]
    assert "diver.launch.cli" in graph["diver.cli"]


def test_package_has_no_import_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_study_layer_is_pure() -> None:
    """``diver.study`` answers what a study is; it never reaches up into how it runs."""
    graph = import_graph()
    upward = ("diver.cli", "diver.launch", "diver.tracking", "diver.report", "diver.scaling")
    for name, targets in graph.items():
        if name.startswith("diver.study"):
            assert not [t for t in targets if t.startswith(upward)], name


def test_launch_runs_the_installed_diver_command() -> None:
    from diver.cli import main
    from diver.launch.slurm import diver_command

    assert diver_command() is main


HEAVY = ("torch", "deepspeed", "mlflow", "scipy", "sklearn", "matplotlib", "pandas", "mne")


def test_building_the_cli_parser_loads_no_heavy_library() -> None:
    """Every ``diver`` call (each Snakemake job, ``--help``) builds the parser of all
    subcommands: importing scipy, pandas, matplotlib and scikit-learn for it cost 2.5 s
    a call; they load in the commands that use them."""
    probe = (
        "import sys; from diver.cli import build_parser; build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


def test_lazy_package_exports_resolve() -> None:
    import diver.report
    import diver.scaling

    for package in (diver.scaling, diver.report):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
