"""The imports of cds/ point one way, and no module reaches itself through them.

Each module is given a layer by LAYERS below. A module may import modules of its own
layer or of lower ones, never of a higher one; and no chain of imports may lead from a
module back to itself. Every ``import`` statement counts — at module level and inside
functions — so a cycle cannot hide in a function body. (Importing a module also runs
its packages' ``__init__``; that implicit import is not an edge: a package's
``__init__`` counts only for what it imports itself.)
"""
from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cds"

# Lowest first. A module's layer is the first match among the application's and the
# surfaces' patterns, then the others' from the lowest up (so `cds.mail.routes` is a
# surface though the rest of `cds.mail` are services). A package whose `__init__`
# imports nothing is in the lowest layer.
LAYERS = (
    ("infrastructure", (
        "cds.config", "cds.extensions", "cds.errors", "cds.safejson", "cds.logs", "cds.security",
        "cds.models", "cds.http", "cds.serving", "cds.csvfile", "cds.scheduler", "cds.version",
        "cds.mail.addresses",  # the configuration checks its sender address with it
        "cds.users.fields",  # the models build the user columns from the field table
    )),
    # Reading and selecting users, the rules of a change, and other pure parts the
    # services share.
    ("rules", (
        "cds.users.errors", "cds.users.selection", "cds.users.changes", "cds.users.query",
        "cds.mail.sandbox", "cds.client.statements", "cds.clients.kind",
    )),
    # Services and actions: the logic, with no request and no HTML.
    ("services", (
        "cds.*.service", "cds.jobs.actions", "cds.imports.csv_import", "cds.settings.accounts",
        "cds.settings.tokens", "cds.users.login_ids", "cds.sources", "cds.sources.*", "cds.clients",
        "cds.clients.cds_v1", "cds.clients.linphone", "cds.clients.linphone.service",
        "cds.clients.linphone.document", "cds.mail.*", "cds.backup.*",
    )),
    # What people and programs reach: pages, the JSON API, the shell.
    ("surfaces", (
        "cds.*.routes", "cds.clients.*.routes", "cds.*.forms", "cds.*.cli", "cds.cli", "cds.web",
        "cds.fragments", "cds.api", "cds.api.*", "cds.settings.mail", "cds.settings.api_tokens",
        "cds.settings.backup",
    )),
    # The application factories that wire the surfaces together.
    ("application", ("cds", "cds.redirect.standalone")),
)
LAYER_NAMES = [name for name, _ in LAYERS]

# Beyond the layers: a command may use the API's schema (its JSON shapes), never the
# API's route modules.
FORBIDDEN = (
    ("cds.*.cli", "cds.api.*", ("cds.api.schema",)),
    ("cds.cli", "cds.api.*", ("cds.api.schema",)),
)


def module_files() -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        # `from cds.x import y`: y may be a module of its own, else a name in cds.x.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                 for alias in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module and name.split(".")[0] == PACKAGE:
            found.append(name)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import}."""
    mods = module_files()
    graph: dict[str, dict[str, int]] = {}
    for module, path in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node, mods):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def layer_of(module: str) -> str | None:
    order = [LAYERS[-1], LAYERS[-2], *LAYERS[:-2]]
    for name, patterns in order:
        if any(fnmatchcase(module, p) for p in patterns):
            return name
    path = module_files()[module]
    if path.name == "__init__.py" and not any(
            isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(path.read_text()))):
        return LAYERS[0][0]
    return None


def _where(graph, source: str, target: str) -> str:
    path = module_files()[source].relative_to(ROOT)
    return f"{source} imports {target} ({path}:{graph[source][target]})"


def _shortest_cycle(graph, start: str, members: set[str]) -> list[str]:
    """Breadth-first from start back to start, inside its group."""
    previous: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = []
                node: str | None = v
                while node is not None:
                    path.append(node)
                    node = previous[node]
                return path[::-1] + [start]
            if w in members and w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is on no cycle")


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Shortest cycles through every module that is on one (each group of modules that
    reach each other is covered, module by module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for group in groups:
        members = set(group)
        covered: set[str] = set()
        for start in group:
            if start in covered:
                continue
            chain = _shortest_cycle(graph, start, members)
            covered.update(chain)
            cycles.append(chain)
    return cycles


def test_every_module_has_a_layer():
    missing = sorted(m for m in module_files() if layer_of(m) is None)
    assert not missing, "modules without a layer (add them to LAYERS in tests/test_layers.py): " \
        + ", ".join(missing)


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    wrong = []
    for source, edges in sorted(graph.items()):
        low = layer_of(source)
        for target in sorted(edges):
            high = layer_of(target)
            if low and high and LAYER_NAMES.index(high) > LAYER_NAMES.index(low):
                wrong.append(f"  {low} → {high}: {_where(graph, source, target)}")
    assert not wrong, "imports that point up the layers " \
        f"({' < '.join(LAYER_NAMES)}):\n" + "\n".join(wrong)


def test_commands_use_the_api_schema_not_its_routes():
    graph = import_graph()
    wrong = []
    for source, edges in sorted(graph.items()):
        for importer, imported, allowed in FORBIDDEN:
            if not fnmatchcase(source, importer):
                continue
            for target in sorted(edges):
                if fnmatchcase(target, imported) and target not in allowed:
                    wrong.append("  " + _where(graph, source, target))
    assert not wrong, "commands importing API modules other than cds.api.schema:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for chain in cycles:
        lines.append("  " + " → ".join(chain))
        lines.extend(f"      {_where(graph, a, b)}" for a, b in zip(chain, chain[1:]))
    assert not cycles, f"{len(cycles)} import cycle(s), function-level imports included:\n" + "\n".join(lines)


def test_the_checks_find_what_they_look_for():
    """On a made-up graph: a cycle through a function-level import is found and named,
    and a module of a lower layer importing a higher one is a layer error."""
    graph = {"cds.a.service": {"cds.b.service": 3}, "cds.b.service": {"cds.c.service": 5},
             "cds.c.service": {"cds.a.service": 40}, "cds.d.service": {"cds.c.service": 1}}
    assert find_cycles(graph) == [["cds.a.service", "cds.b.service", "cds.c.service", "cds.a.service"]]
    assert find_cycles({"cds.a.service": {"cds.b.service": 1}, "cds.b.service": {}}) == []
    assert LAYER_NAMES.index(layer_of("cds.models")) < LAYER_NAMES.index(layer_of("cds.users.routes"))
    assert layer_of("cds.mail.addresses") == "infrastructure" and layer_of("cds.mail.compose") == "services"
