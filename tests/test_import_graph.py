"""The import graph runs one way (docs/ARCHITECTURE.md): the agent imports nothing of the host;
the foundation (config, errors, audit, lifecycle, seam, agent_client, events, metrics, ...)
imports nothing of ``dbops.ops`` or the task layer; ``dbops.ops`` imports nothing of the task
layer (tasks, cli, fleet, serve). Read from the source with ``ast``, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dbops"
LAYERS = {"agent": 0, "foundation": 1, "ops": 2, "top": 3}
TOP = ("dbops.tasks", "dbops.cli", "dbops.fleet", "dbops.serve")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    def within(prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    if within("dbops.agent"):
        return "agent"
    if any(within(t) for t in TOP):
        return "top"
    return "ops" if within("dbops.ops") else "foundation"


def existing(name: str, modules: set[str]) -> str | None:
    """``dbops.ops.steps.Run`` -> ``dbops.ops.steps``: the module an import names."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name and name != "dbops" else None


def imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("dbops") and (hit := existing(name, modules)):
                found.add(hit)
    return found


def arrows_up() -> list[str]:
    files = {module_of(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    bad = []
    for module, path in sorted(files.items()):
        for target in sorted(imports(path, modules)):
            here, there = layer(module), layer(target)
            if LAYERS[there] > LAYERS[here] or (here == "agent" and there != "agent"):
                bad.append(f"{module} -> {target} ({here} -> {there})")
    return bad


def test_no_import_runs_back_up_the_layers():
    assert arrows_up() == []


def test_the_check_sees_an_arrow_up(tmp_path):
    """The check itself can fail: a foundation module importing an op is reported."""
    fake = tmp_path / "dbops"
    (fake / "ops").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "ops" / "__init__.py").write_text("")
    (fake / "ops" / "migrate.py").write_text("")
    (fake / "config.py").write_text("def f():\n    from dbops.ops.migrate import x\n")
    (fake / "agent").mkdir()
    (fake / "agent" / "__init__.py").write_text("import dbops.config\n")
    globals()["PACKAGE"], saved = fake, PACKAGE
    try:
        assert arrows_up() == [
            "dbops.agent -> dbops.config (agent -> foundation)",
            "dbops.config -> dbops.ops.migrate (foundation -> ops)",
        ]
    finally:
        globals()["PACKAGE"] = saved


def test_every_module_docs_architecture_names_exists():
    """docs/ARCHITECTURE.md's map names real files (a renamed module moves its line)."""
    import re

    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"\bdbops/[\w/]+\.py\b", text))
    for short in ("ops", "agent", "tasks", "fleet"):  # ops/restore_swap.py: dbops/ops/...
        named |= {f"dbops/{short}/{m}" for m in re.findall(rf"(?<![\w/]){short}/(\w+\.py)", text)}
    assert len(named) > 15
    missing = sorted(p for p in named if not (PACKAGE.parent / p).is_file())
    assert missing == []


def test_no_operation_writes_an_audit_record_itself():
    """Every audit record comes through dbops.lifecycle (Operation, write_settlement)."""
    writers = []
    for path in sorted((PACKAGE / "ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "append"
                and isinstance(node.value, ast.Name)
                and node.value.id == "audit"
            ):
                writers.append(f"{path.name}:{node.lineno}")
    assert writers == []


def test_operations_are_named_steps_of_under_60_lines():
    """issue 18: the long procedures became named steps; keep them so."""
    long = []
    for path in sorted((PACKAGE / "ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines >= 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
