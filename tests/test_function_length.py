"""The house rule on function size, checked on the source: no function or method of the package
(nested ones included; counted from ``def`` to its last line) is over 80 lines, except
the models' constructors, which read like the papers' figures."""

from __future__ import annotations

import ast
import os
from typing import Iterator, List, Tuple

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src", "partreid")
MAX_LINES = 80


def long_functions(source: str, rel: str, limit: int = MAX_LINES) -> List[Tuple[str, str, int]]:
    """``(file, function, lines)`` of the functions in ``source`` longer than ``limit`` lines."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines = node.end_lineno - node.lineno + 1
        model_constructor = rel.startswith("models" + os.sep) and node.name == "__init__"
        if lines > limit and not model_constructor:
            out.append((rel, node.name, lines))
    return out


def _sources() -> Iterator[Tuple[str, str]]:
    for root, _, files in os.walk(SRC):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, SRC), f.read()


def test_no_function_is_over_80_lines():
    found = [hit for rel, text in _sources() for hit in long_functions(text, rel)]
    assert not found, f"functions over {MAX_LINES} lines (split them): {found}"


def test_the_checker_sees_a_long_function_and_spares_model_constructors():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    source = f"class A:\n  def __init__(self):\n{body}\ndef f():\n{body}\n"
    assert sorted(name for _, name, _ in long_functions(source, "engine/x.py")) == ["__init__", "f"]
    assert [name for _, name, _ in long_functions(source, os.path.join("models", "x.py"))] == ["f"]
