"""The package's layer order (ARCHITECTURE.md), checked on the source: a module imports only
rooms of lower layers (or its own room), never one of a higher layer, at module level or inside
a function; imports inside functions are left for optional extras; no import cycles.

The test reads the source with ``ast`` and runs none of it, so it also sees imports in functions
that no other test calls.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

import pytest

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src", "partreid")

# lowest first; a room may import its own modules and those of rooms in lower layers
LAYERS: List[Tuple[str, ...]] = [
    ("errors", "_version"),
    ("utils",),
    ("data", "models", "metrics", "losses", "features", "checkpoint", "store", "index"),
    ("config",),
    ("inference",),
    ("report",),
    ("engine", "deploy"),
    ("serve", "visualize", "demo"),
    ("commands",),  # the commands' glue: only cli uses it
    ("cli",),
    ("__main__", ""),  # "" = the package root, partreid/__init__.py
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
# rooms of one layer that may use each other, one way (the store keeps Features-style arrays)
SAME_LAYER_ALLOWED = {
    ("store", "features"),
    ("store", "metrics"),
    ("index", "features"),
    ("index", "metrics"),
}
# imports of partreid modules inside functions, each with its reason
IN_FUNCTION_ALLOWED = {
    # ``partreid.load_model`` without loading models and torchvision on ``import partreid.metrics``
    ("partreid", "partreid.inference"),
}
# optional extras: imported only inside the functions that use them, never at module level
OPTIONAL = {
    "faiss",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "fastapi",
    "fastapi_offline",
    "starlette",
    "uvicorn",
    "av",
    "pymilvus",
    "milvus_lite",
    "playwright",
    "tensorboard",
    "multipart",
}


def _modules() -> Dict[str, str]:
    """``{dotted module name: file}`` of every module of the package."""
    root = os.path.abspath(SRC)
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.AST, is_package: bool) -> Iterator[str]:
    """The modules an import statement names (``from a import b``: ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    for alias in node.names:
        full = f"{base}.{alias.name}"
        yield full if full in MODULES else base


def _imports(module: str) -> Iterator[Tuple[str, bool, int]]:
    """``(imported module, inside a function?, line)`` for every import in ``module``."""
    path = MODULES[module]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = path.endswith("__init__.py")

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(module, child, is_package):
                    yield t, in_function, child.lineno
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(child, inner)

    yield from walk(tree, False)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _internal(target: str) -> str:
    """The package module an import refers to ('' if it is not one of ours)."""
    if target != "partreid" and not target.startswith("partreid."):
        return ""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_every_room_has_a_layer():
    unknown = sorted({_room(m) for m in MODULES} - set(LAYER))
    assert not unknown, f"rooms without a layer in ARCHITECTURE.md / this test: {unknown}"


def test_imports_go_down_the_layers():
    bad = []
    for module in sorted(MODULES):
        src_room = _room(module)
        for target, in_function, line in _imports(module):
            dst = _internal(target)
            if not dst or dst == module:
                continue
            dst_room = _room(dst)
            if dst_room == src_room:
                continue
            up = LAYER[dst_room] > LAYER[src_room]
            sideways = (
                LAYER[dst_room] == LAYER[src_room]
                and (src_room, dst_room) not in SAME_LAYER_ALLOWED
            )
            if up or sideways:
                where = "inside a function" if in_function else "at module level"
                bad.append(
                    f"{MODULES[module]}:{line}: {module} (layer {LAYER[src_room]}, {src_room}) "
                    f"imports {dst} (layer {LAYER[dst_room]}, {dst_room}) {where}"
                )
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_package_imports_inside_functions():
    bad = [
        f"{MODULES[m]}:{line}: {m} imports {_internal(t)} inside a function"
        for m in sorted(MODULES)
        for t, in_function, line in _imports(m)
        if in_function
        and _internal(t)
        and _internal(t) != m
        and (m, _internal(t)) not in IN_FUNCTION_ALLOWED
    ]
    assert not bad, (
        "imports of partreid modules inside functions (move them to the top; only optional "
        "extras are imported where used):\n" + "\n".join(bad)
    )


def test_optional_extras_are_imported_where_used():
    bad = [
        f"{MODULES[m]}:{line}: {t} imported at module level"
        for m in sorted(MODULES)
        for t, in_function, line in _imports(m)
        if not in_function and t.split(".")[0] in OPTIONAL
    ]
    assert not bad, "optional extras at module level:\n" + "\n".join(bad)


def _graph(module_level_only: bool) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for t, in_function, _ in _imports(m):
            dst = _internal(t)
            if dst and dst != m and not (module_level_only and in_function):
                graph[m].add(dst)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "all"])
def test_no_import_cycles(module_level_only):
    cycles = _cycles(_graph(module_level_only))
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_violation(tmp_path):
    """The walker itself: an upward import inside a function is found."""
    code = "def f():\n    from ..serve import app\n"
    tree = ast.parse(code)
    node = tree.body[0].body[0]
    assert list(_targets("partreid.metrics.rank", node, False)) == ["partreid.serve.app"]
    assert LAYER[_room("partreid.serve.app")] > LAYER[_room("partreid.metrics.rank")]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
