"""The house's floors: no new import circle among zoo's modules, and the lower floors (errors, weights,
layers, the data description) never import the harness above them."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The one circle left: the worker calls harness/deploy.py after training, and deploy re-opens a finished
# run through the worker's Run class (issue 33: the run's stages in their own module, below the worker's
# process shell, end it). It may shrink; nothing may join it and no other may form.
KNOWN_CIRCLES = [{"zoo.harness.deploy", "zoo.harness.worker"}]


def import_graph() -> dict:
    """Module -> the zoo modules it imports, at the top or inside a function (both tie modules)."""
    modules = {}
    for path in (ROOT / "zoo").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict) -> list[set]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_new_import_circle():
    for circle in circles(import_graph()):
        assert any(circle <= known for known in KNOWN_CIRCLES), f"a new import circle: {sorted(circle)}"


def test_lower_floors_do_not_import_the_harness():
    graph = import_graph()
    for module in ("zoo.errors", "zoo.weights", "zoo.layers", "zoo.factory", "zoo.data.steps", "zoo.data.pipeline",
                   "zoo.data.array_pipeline", "zoo.backbones.hub", "zoo.console", "zoo.export", "zoo.results",
                   "zoo.heads"):
        upward = {m for m in graph[module] if m.startswith(("zoo.harness", "zoo.report", "zoo.cli"))}
        assert not upward, f"{module} imports {sorted(upward)} from a floor above it"


def test_the_graph_sees_a_circle_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
