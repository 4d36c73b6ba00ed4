"""The package's structure as a newcomer meets it: no import cycles (counting the imports inside
functions, which is where cycles hide), and the device's runtime pulls in numpy and the standard
library only."""

import ast
import subprocess
import sys
from pathlib import Path

import edgetl

PACKAGE = Path(edgetl.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Every edgetl module -> the edgetl modules it imports anywhere in its file."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_imports_it_must_judge():
    graph = _graph()
    assert "edgetl.runtime.heads" in graph["edgetl.runtime.model"]  # a top-level import
    assert "edgetl.export" in graph["edgetl.backends"]  # one inside a function counts too
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_edgetl_has_no_import_cycle():
    assert _cycles(_graph()) == []


RUNTIME = ("edgetl.runtime", "edgetl.runtime.model", "edgetl.runtime.verify", "edgetl.runtime.manifest",
           "edgetl.runtime.measure", "edgetl.runtime.receive", "edgetl.runtime.heads", "edgetl.runtime.adapt",
           "edgetl.runtime.cli", "edgetl.runtime.engines.ort", "edgetl.runtime.engines.litert",
           "edgetl.runtime.engines.edgetpu", "edgetl.runtime.engines.tensorrt")


def test_the_runtime_imports_numpy_and_the_standard_library_only():
    code = (f"import importlib, sys\nfor m in {RUNTIME!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ours = {m for m in loaded if m == "edgetl" or m.startswith("edgetl.")}
    assert ours - {"edgetl", "edgetl.errors"} == {m for m in ours if m.startswith("edgetl.runtime")}
    foreign = sorted(m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names
                     and m.split(".")[0] not in ("edgetl", "numpy") and not m.startswith("_"))
    assert foreign == []
