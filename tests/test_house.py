"""The shape of the code: the typed configuration is a leaf, no module imports back into itself, raygap is
imported at the top of a file, one ETA."""

import ast
from pathlib import Path

from raygap.progress import eta

PACKAGE = Path(__file__).resolve().parent.parent / "raygap"


def raygap_imports(path: Path) -> set:
    """The raygap modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "raygap":
            found |= {f"raygap.{a.name}" for a in node.names} if node.module == "raygap" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "raygap"}
    return found


def module_name(path: Path) -> str:
    return ".".join(("raygap", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_the_schema_imports_nothing_of_raygap():
    assert raygap_imports(PACKAGE / "schema.py") == set()


def test_no_module_imports_back_into_itself():
    graph = {module_name(p): raygap_imports(p) for p in PACKAGE.rglob("*.py")}
    assert len(graph) > 30 and graph["raygap.config"] >= {"raygap.schema", "raygap.attacks"}  # the walk sees them
    cycles = []

    def visit(module, path):
        for imported in graph.get(module, ()):
            if imported in path:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported in graph and imported not in done:
                visit(imported, path + [imported])
        done.add(module)

    done = set()
    for module in graph:
        visit(module, [module])
    assert not cycles, cycles


def test_raygap_is_imported_inside_a_function_only_where_the_readme_allows():
    """results.py alone: a notebook that reads the tables should not load torch through methods/ and attacks.py."""
    local = set()
    for path in PACKAGE.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom):
                        names = [node.module or ""]
                    elif isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    else:
                        continue
                    if any(name.split(".")[0] == "raygap" for name in names):
                        local.add(module_name(path))
    assert local == {"raygap.results"}, local


def test_eta_counts_hours_past_a_day():
    assert (eta(400), eta(3 * 86400 + 61), eta(0.4)) == ("00:06:40", "72:01:01", "00:00:00")
    assert eta(float("nan")) == "--:--:--"
