"""The package layout shows the architecture: the supervisor's side (``parent``) and the
worker's side (``child``, ``roles``) never import each other, the wire (``transport``)
depends on nothing of ours but errors and types, and no module imports in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lilbee_workers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    """Every ``lilbee_workers`` module ``path`` imports, at any depth of its code,
    except under ``if TYPE_CHECKING:`` (type names only, nothing runs)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lilbee_workers"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.startswith("lilbee_workers"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: our_imports(path) for name, path in MODULES.items()}


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_parent_never_imports_the_worker_side() -> None:
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if in_package(name, "lilbee_workers.parent")
        for dep in deps
        if in_package(dep, "lilbee_workers.child") or in_package(dep, "lilbee_workers.roles")
    }
    assert not bad


FACES = ("lilbee_workers.cli", "lilbee_workers.service", "lilbee_workers.http")


def test_the_library_never_imports_a_face() -> None:
    """The library (supervisor, client, parent, worker side, hub, ...) imports nothing of
    the command line, the service or the HTTP face: a program that embeds a Supervisor
    loads no typer, no daemon and no Starlette."""
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if not any(in_package(name, face) for face in FACES)
        for dep in deps
        if any(in_package(dep, face) for face in FACES)
    }
    assert not bad


def test_worker_side_never_imports_the_parent() -> None:
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if in_package(name, "lilbee_workers.child") or in_package(name, "lilbee_workers.roles")
        for dep in deps
        if in_package(dep, "lilbee_workers.parent")
        or dep
        in ("lilbee_workers.supervisor", "lilbee_workers.client", "lilbee_workers.service.daemon")
    }
    assert not bad


def test_ray_backend_keeps_the_two_sides_apart() -> None:
    """``cluster.actor`` runs in the actor (worker side); the rest of ``cluster`` runs in
    the supervisor and names the actor class only for Ray to make actors from it."""
    actor = "lilbee_workers.cluster.actor"
    supervisor_side = {
        (name, dep)
        for name, deps in GRAPH.items()
        if in_package(name, "lilbee_workers.cluster") and name != actor
        for dep in deps
        if in_package(dep, "lilbee_workers.child") or in_package(dep, "lilbee_workers.roles")
    }
    worker_side = {dep for dep in GRAPH[actor] if in_package(dep, "lilbee_workers.parent")}
    assert not supervisor_side and not worker_side


def test_transport_depends_only_on_errors_and_types() -> None:
    allowed = {"lilbee_workers", "lilbee_workers.errors", "lilbee_workers.types"}
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if in_package(name, "lilbee_workers.transport")
        for dep in deps
        if not in_package(dep, "lilbee_workers.transport") and dep not in allowed
    }
    assert not bad


def test_errors_and_types_import_nothing_of_ours() -> None:
    assert GRAPH["lilbee_workers.errors"] == set()
    assert GRAPH["lilbee_workers.types"] == set()


def test_no_import_cycles() -> None:
    graph = {name: {d for d in deps if d != "lilbee_workers"} for name, deps in GRAPH.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail, name]))
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        if name != "lilbee_workers":
            visit(name, [])


LIMITS = {
    "lilbee_workers.transport.frames": 430,  # the whole wire schema, in one place by design
}


def test_modules_and_functions_stay_small() -> None:
    """~350 lines a module (two named exceptions), ~60 a function: past that, a piece
    has more than one job."""
    too_big = []
    for name, path in MODULES.items():
        source = path.read_text()
        limit = LIMITS.get(name, 360)
        if len(source.splitlines()) > limit:
            too_big.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    too_big.append(f"{name}.{node.name}: {length} lines")
    assert not too_big
