"""The package's layer order (ARCHITECTURE.md), checked on the source: a module imports only
rooms of lower layers (or its own room), never one of a higher layer, at module level or inside
a function; imports inside functions are left for optional extras; no import cycles.

A ``"partreid.module:name"`` string constant is an import by name done when the code runs (the
command line's ``RUNS`` table, the store's ``BACKENDS``, the catalogue): it is an edge of the
module that holds it, checked against the layers and the cycles like an import, and it must name
a module of the package and a name that module defines.

The test reads the source with ``ast`` and runs none of it, so it also sees imports in functions
that no other test calls.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src", "partreid")

# lowest first; a room may import its own modules and those of rooms in lower layers
LAYERS: List[Tuple[str, ...]] = [
    ("errors", "_version"),
    ("utils",),
    ("data", "models", "metrics", "losses", "features", "checkpoint", "store", "index"),
    ("config", "catalogue"),  # catalogue: the models and data sets by name, without torch
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
    "milvus",
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


@functools.cache
def _tree(module: str) -> ast.Module:
    path = MODULES[module]
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _imports(module: str) -> Iterator[Tuple[str, bool, int]]:
    """``(imported module, inside a function?, line)`` for every import in ``module``."""
    tree = _tree(module)
    is_package = MODULES[module].endswith("__init__.py")

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(module, child, is_package):
                    yield t, in_function, child.lineno
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(child, inner)

    yield from walk(tree, False)


# "partreid.module:name", as cli's RUNS and store's BACKENDS name what they import when they run
TARGET = re.compile(r"^(partreid(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")


def _lazy_targets(tree: ast.AST) -> Iterator[Tuple[str, str, int]]:
    """``(module, name, line)`` of every ``"partreid.module:name"`` string constant in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = TARGET.match(node.value)
            if m:
                yield m.group(1), m.group(2), node.lineno


def _top_level_names(tree: ast.Module) -> Set[str]:
    """The names a module defines at module level (defs, classes, assignments, imports)."""
    names: Set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo.extend(ast.iter_child_nodes(node))
    return names


def _missing_target(module: str, name: str) -> str:
    """Why ``"module:name"`` names nothing ('' if it names a module's name or a submodule)."""
    if module not in MODULES:
        return f"no module {module}"
    if name in _top_level_names(_tree(module)) or f"{module}.{name}" in MODULES:
        return ""
    return f"{module} defines no {name!r}"


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


def _edges(module: str) -> Iterator[Tuple[str, str, int]]:
    """``(target, how, line)``: the module's imports and its ``"module:name"`` targets."""
    for target, in_function, line in _imports(module):
        yield target, "inside a function" if in_function else "at module level", line
    for target, name, line in _lazy_targets(_tree(module)):
        yield target, f"by name ('{target}:{name}')", line


def test_imports_go_down_the_layers():
    bad = []
    for module in sorted(MODULES):
        src_room = _room(module)
        for target, where, line in _edges(module):
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
                bad.append(
                    f"{MODULES[module]}:{line}: {module} (layer {LAYER[src_room]}, {src_room}) "
                    f"imports {dst} (layer {LAYER[dst_room]}, {dst_room}) {where}"
                )
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_lazy_targets_name_what_exists():
    """A ``"module:name"`` target that is misspelt, or whose module or name went, fails here
    rather than when a user runs the command."""
    bad = [
        f"{MODULES[m]}:{line}: '{target}:{name}': {why}"
        for m in sorted(MODULES)
        for target, name, line in _lazy_targets(_tree(m))
        for why in [_missing_target(target, name)]
        if why
    ]
    assert not bad, "targets that name nothing:\n" + "\n".join(bad)


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
        for t, where, _ in _edges(m):
            dst = _internal(t)
            if dst and dst != m and not (module_level_only and where != "at module level"):
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


def test_the_checker_sees_bad_targets():
    """Targets are read from string constants; a misspelt module or name is reported."""
    tree = ast.parse(
        'RUNS = {"a": "partreid.commands.store:stats_command", "b": "not a target",\n'
        '        "c": "partreid.comands.store:stats_command", "d": "partreid.cli:nope"}\n'
    )
    found = list(_lazy_targets(tree))
    assert [(t, n) for t, n, _ in found] == [
        ("partreid.commands.store", "stats_command"),
        ("partreid.comands.store", "stats_command"),
        ("partreid.cli", "nope"),
    ]
    assert [bool(_missing_target(t, n)) for t, n, _ in found] == [False, True, True]
    assert _missing_target("partreid.engine", "train") == ""  # re-exported by a package
    assert _missing_target("partreid.commands", "store") == ""  # a submodule
    assert LAYER[_room("partreid.cli")] > LAYER[_room("partreid.commands.store")]
