"""The house rules, read from the code's own imports: who may import whom, no cycles.

Each package's ``__init__.py`` says in words what it owns and what it may import; this
test holds the code to those words (imports anywhere in a module count, also inside
functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: worker's packages (and top-level modules) -> the parts of worker each may import.
WORKER_LAYERS: dict[str, set[str]] = {
    "exceptions": set(),
    "contract": {"exceptions", "contract"},
    "core": {"contract", "core"},
    "observe": {"contract", "observe"},
    "kafka": {"exceptions", "contract", "observe", "kafka"},
    "model": {"contract", "core", "observe", "model"},
    "delivery": {"exceptions", "contract", "core", "observe", "kafka", "delivery"},
    "processing": {"contract", "core", "observe", "kafka", "model", "delivery"},
    "pipeline": {"contract", "core", "observe", "kafka", "model", "delivery", "processing"},
    "settings": {"kafka", "contract"},
    "app": {
        "exceptions",
        "contract",
        "core",
        "observe",
        "kafka",
        "model",
        "delivery",
        "processing",
        "pipeline",
        "settings",
    },
    "cli": {"contract", "observe", "kafka", "delivery", "settings", "app"},
    "__main__": {"cli"},
    "__init__": set(),
}
#: What training may take from worker: the shared contract, the Kafka slice, the log set-up.
TRAINING_MAY_IMPORT = (
    "worker.contract.",
    "worker.kafka.options",
    "worker.kafka.ports",
    "worker.kafka.settings",
    "worker.observe.logs",
)
KAFKA_CLIENTS = ("kafka", "confluent_kafka")
#: The pure parts: plain arguments in, plain values out.
PURE = {"contract": ("prometheus_client", "pydantic", "pydantic_settings"), "core": ("torch",)}
MAX_MODULE_LINES = 350


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module named by an import in ``path`` (``from a import b`` counts ``a.b`` too,
    when ``a.b`` is a module of this repository)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


ALL = {**modules("worker"), **modules("training")}


def internal_imports(path: Path) -> set[str]:
    return {name for name in imports_of(path) if name in ALL}


def part_of(module: str) -> str:
    """``worker.kafka.ports`` -> ``kafka``; ``worker.app`` -> ``app``."""
    return module.split(".")[1]


def test_every_worker_part_has_a_rule():
    assert {part_of(m) for m in modules("worker")} <= set(WORKER_LAYERS)


@pytest.mark.parametrize("module", sorted(modules("worker")))
def test_worker_modules_import_only_what_their_package_may(module):
    own = part_of(module)
    allowed = WORKER_LAYERS[own] | {own}
    names = imports_of(ALL[module])
    assert not [n for n in names if n.split(".")[0] == "training"], "worker imports training"
    refused = sorted(
        n for n in internal_imports(ALL[module]) if n != "worker" and part_of(n) not in allowed
    )
    assert not refused, f"{module} may import {sorted(allowed)}, not {refused}"
    if own != "kafka":
        clients = sorted(n for n in names if n.split(".")[0] in KAFKA_CLIENTS)
        assert not clients, f"only worker.kafka talks to a Kafka client: {module} imports {clients}"
    for package in PURE.get(own, ()):
        assert not [n for n in names if n.split(".")[0] == package], f"{module} imports {package}"


@pytest.mark.parametrize("module", sorted(modules("training")))
def test_training_takes_only_the_contract_the_kafka_slice_and_logging_from_worker(module):
    taken = sorted(n for n in imports_of(ALL[module]) if n.split(".")[0] == "worker")
    refused = [n for n in taken if not n.startswith(TRAINING_MAY_IMPORT)]
    assert not refused, f"{module} imports {refused}"


def test_no_import_cycles():
    graph = {m: internal_imports(p) - {m} for m, p in ALL.items()}
    # A package's __init__ is imported on the way to its modules: not an edge of the cycle test.
    graph = {m: {n for n in edges if ALL[n].name != "__init__.py"} for m, edges in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_no_test_module_imports_another():
    tests = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "tests").rglob("test_*.py")
    }
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        taken = imports_of(path) & tests
        if taken:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(taken)}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "package",
    sorted({p.parent for p in (ROOT / "worker").rglob("__init__.py")} | {ROOT / "training"}),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_each_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    assert "Owns" in doc and "May import" in doc, f"{package}/__init__.py: say both"


@pytest.mark.parametrize("module", sorted(ALL))
def test_modules_stay_small(module):
    lines = len(ALL[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (at most {MAX_MODULE_LINES})"
