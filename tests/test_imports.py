"""The house's floors: no new import circle among zoo's modules, and the lower floors (errors, weights,
layers, the data description) never import the harness above them."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {[sorted(circle) for circle in found]}"


def test_the_worker_shell_and_the_run_stages_stay_apart():
    """The worker process calls the run's stages and the deployment flows; neither calls back up."""
    graph = import_graph()
    assert "zoo.harness.worker" not in graph["zoo.harness.stages"] | graph["zoo.harness.deploy"]
    assert "zoo.harness.deploy" not in graph["zoo.harness.stages"]


def test_run_json_has_one_reader():
    """Only zoo.runspec parses a run folder's run.json; every other module goes through RunSpec.load."""
    readers = [path.relative_to(ROOT) for path in (ROOT / "zoo").rglob("*.py")
               if '"run.json").read' in path.read_text() or "'run.json').read" in path.read_text()]
    assert readers == [], f"run.json parsed outside zoo.runspec: {readers}"


def test_lower_floors_do_not_import_the_harness():
    graph = import_graph()
    for module in ("zoo.errors", "zoo.runspec", "zoo.weights", "zoo.layers", "zoo.factory", "zoo.data.steps",
                   "zoo.data.pipeline", "zoo.data.decoded", "zoo.data.prepare", "zoo.backbones.hub", "zoo.console",
                   "zoo.export", "zoo.results", "zoo.heads"):
        upward = {m for m in graph[module] if m.startswith(("zoo.harness", "zoo.report", "zoo.cli"))}
        assert not upward, f"{module} imports {sorted(upward)} from a floor above it"


def test_the_graph_sees_a_circle_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
