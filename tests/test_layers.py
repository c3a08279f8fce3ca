"""Layering: no module of components/ or pipelines/ imports from a higher layer (imports
inside function bodies included), and task names are compared as strings in at most three
places outside components/tasks (the stages ask the task object instead)."""

from __future__ import annotations

import ast
from pathlib import Path

from components.core.layers import LAYERS, TOP, tier

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = {"classification", "detection", "mae"}
MAX_TASK_STRING_COMPARISONS = 3


def _modules():
    for base in ("components", "pipelines"):
        for path in sorted((ROOT / base).rglob("*.py")):
            rel = path.relative_to(ROOT)
            package = rel.parts[1] if base == "components" and len(rel.parts) > 2 else base
            yield rel, package, ast.parse(path.read_text(), filename=str(rel))


def _imported_packages(tree: ast.AST):
    """``(line, target package)`` of every absolute import of components.X / pipelines."""
    for node in ast.walk(tree):  # every node: module level and inside functions alike
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "components":  # from components import data
                names = [f"components.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "components" and len(parts) > 1:
                yield node.lineno, parts[1]
            elif parts[0] == TOP:
                yield node.lineno, TOP


def test_every_package_is_in_the_layer_map():
    packages = {p.name for p in (ROOT / "components").iterdir() if (p / "__init__.py").is_file()}
    mapped = {p for tier_ in LAYERS for p in tier_}
    assert packages == mapped, f"unmapped: {packages - mapped}, missing: {mapped - packages}"


def test_no_import_from_a_higher_layer():
    bad = []
    for rel, package, tree in _modules():
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), \
            f"{rel}: relative import (write components.X so the layers can be checked)"
        for line, target in _imported_packages(tree):
            if target == package:
                continue
            if tier(target) > tier(package) or (tier(target) == tier(package)):
                bad.append(f"{rel}:{line}: {package} (tier {tier(package)}) imports {target} "
                           f"(tier {tier(target)})")
    assert not bad, "imports against the layer map:\n" + "\n".join(bad)


def test_the_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from components.cli.main import main\n")
    assert list(_imported_packages(tree)) == [(2, "cli")]
    assert tier("cli") > tier("core")


def _task_string_comparisons(tree: ast.AST):
    """Lines comparing something with a task name literal (``==``, ``!=``, ``in``, ``not in``)."""
    def literals(node):
        if isinstance(node, ast.Constant) and node.value in TASK_NAMES:
            return True
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(isinstance(e, ast.Constant) and e.value in TASK_NAMES for e in node.elts)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            if any(literals(side) for side in [node.left, *node.comparators]):
                yield node.lineno


def test_task_names_are_rarely_compared_as_strings():
    found = [f"{rel}:{line}" for rel, package, tree in _modules() if package != "tasks"
             for line in _task_string_comparisons(tree)]
    assert len(found) <= MAX_TASK_STRING_COMPARISONS, (
        f"{len(found)} comparisons of a task name with a string literal outside components/tasks "
        f"(at most {MAX_TASK_STRING_COMPARISONS}); ask the task object (components.tasks.get_task) "
        "instead:\n" + "\n".join(found))


def test_the_comparison_count_sees_each_form():
    src = 'a == "mae"\nb != "detection"\nc in ("classification", "x")\nd not in ["mae"]\ne = "mae"\n'
    assert list(_task_string_comparisons(ast.parse(src))) == [1, 2, 3, 4]
