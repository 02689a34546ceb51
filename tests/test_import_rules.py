"""The rules between hotprune's parts (docs/architecture.md, "Package layout"), read from the source's imports.

Every import counts, at module level or inside a function: a lazy import breaks a rule as surely as a
top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository's folders and the package names they install as (pyproject.toml's package-dir).
PACKAGE_DIRS = {"service": "hotprune", "workers": "hotprune.workers", "protocol": "hotprune.protocol"}

ROLES = ("hotprune.roles", "hotprune.workers")
USER_FACING = ("hotprune.commands", "hotprune.cli", "hotprune.api")
TORCH_FREE = ("hotprune.protocol", "hotprune.pruning", "hotprune.comms", "hotprune.workers")
LEARNING = ("hotprune.learning",)
# Ray (an optional extra, 0.6 s to import) only where --ray leads: joining a cluster, a grid's cells, a run's nodes.
RAY_USERS = ("hotprune.raycluster", "hotprune.commands.ray_grid", "hotprune.roles.ray_nodes")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, load_time_only: bool = False) -> list[tuple[str, int]]:
    """Every module `name` imports (absolute names), with its line; with `load_time_only`, only the
    module-level imports (those that run when it is imported)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    out = []
    for node in tree.body if load_time_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # `from pkg import module`
    return out


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def broken_rules() -> list[str]:
    known = modules()
    broken = []
    for name, path in sorted(known.items()):
        for target, line in imports(name, path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if under(name, ROLES) and under(target, USER_FACING):
                broken.append(f"{where}: a role never imports a user command or the CLI")
            if under(name, TORCH_FREE) and (target == "torch" or target.startswith("torch.")):
                broken.append(f"{where}: protocol, pruning, comms and workers never import torch")
            if under(name, TORCH_FREE) and under(target, LEARNING):
                broken.append(f"{where}: protocol, pruning, comms and workers never import the learning code")
            if under(target, ("ray",)) and name not in RAY_USERS:
                broken.append(f"{where}: only {', '.join(RAY_USERS)} import ray (only with --ray)")
            if under(name, ("hotprune.protocol",)) and target.startswith("hotprune") \
                    and not under(target, ("hotprune.protocol",)):
                broken.append(f"{where}: protocol holds formats only and imports nothing else of hotprune")
    return broken


def test_the_package_layout_rules_hold():
    assert broken_rules() == []


def test_the_rules_see_an_import_inside_a_function(tmp_path):
    path = tmp_path / "trainer.py"
    path.write_text("def f():\n    from hotprune.commands import lth\n    import torch.nn\n")
    assert ("hotprune.commands.lth", 2) in imports("hotprune.roles.trainer", path)
    assert ("torch.nn", 3) in imports("hotprune.roles.trainer", path)


def test_relative_imports_resolve_to_their_package(tmp_path):
    path = tmp_path / "engine.py"
    path.write_text("from .criteria import scores\nfrom ..learning import policy\n")
    found = imports("hotprune.pruning.engine", path)
    assert ("hotprune.pruning.criteria", 1) in found and ("hotprune.learning.policy", 2) in found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    found = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                found.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_no_import_cycle_at_load_time():
    """Module-level imports only (a function's import runs later): a cycle there makes import order matter."""
    known = modules()
    graph = {name: {target for target, _ in imports(name, path, load_time_only=True)
                    if target in known and target != name} for name, path in known.items()}
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_hotprune_is_importable_from_outside_the_repository(tmp_path):
    """From another directory (the repository not on sys.path), the install gives `hotprune` and its parts, and no
    top-level `service`, `workers` or `protocol` that would shadow a user's own modules."""
    import subprocess
    import sys

    code = ("import importlib.util as u, hotprune.workers.inference_worker, hotprune.protocol.codec\n"
            "print([n for n in ('service', 'workers', 'protocol') if u.find_spec(n)])\n"
            "print(hotprune.workers.inference_worker.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "hotprune.workers.inference_worker"]
