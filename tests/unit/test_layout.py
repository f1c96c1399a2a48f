"""The package's shape, as the team agreed it: small classes and functions, and a test file per module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
MODULES = sorted(path for path in (ROOT / "gateway").glob("*.py") if path.name != "__init__.py")
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 40


def lengths(path: Path) -> list[tuple[str, str, int]]:
    """Every class and function of a module: (kind, name, lines)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            found.append(("class", node.name, node.end_lineno - node.lineno + 1))  # type: ignore[operator]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(("function", node.name, node.end_lineno - node.lineno + 1))  # type: ignore[operator]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_no_class_or_function_is_too_long_to_read_at_once(path: Path) -> None:
    limits = {"class": MAX_CLASS_LINES, "function": MAX_FUNCTION_LINES}
    assert [(kind, name, size) for kind, name, size in lengths(path) if size > limits[kind]] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_every_module_has_a_test_file_named_after_it(path: Path) -> None:
    candidates = [ROOT / "tests" / folder / f"test_{path.name}" for folder in ("unit", "integration")]
    assert any(test.exists() for test in candidates), " or ".join(str(test.relative_to(ROOT)) for test in candidates)
