"""The package's layers (docs/ARCHITECTURE.md): no module imports a layer above its own, and no cycles.

Imports are read with ``ast`` from the source (module level and inside functions alike), so a lazy
``from ups.x import y`` inside a function counts as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module may import its own layer and the layers below it. Longest prefix wins.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ups", "ups.errors", "ups.io_utils", "ups.registry", "ups.schema", "ups.checkpoint"),
    ("ups.config",),
    ("ups.data",),
    ("ups.models",),
    ("ups.rollout", "ups.eval.metrics"),
    ("ups.rundir", "ups.simulator"),
    ("ups.training",),
    ("ups.eval",),
    ("ups.pipeline",),
    ("ups.cli", "ups.__main__"),
)
# Training and evaluation share the layers below them (the one rollout, the one scorer ``ups.eval.metrics``)
# and never import each other.
FORBIDDEN = {"ups.eval": "ups.training", "ups.training": "ups.eval"}


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
    return level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``ups`` module ``path`` imports (``from ups.a import b`` counts ``ups.a.b`` when it is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ups"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ups":
            out.add(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if (SRC / Path(*sub.split("."))).with_suffix(".py").is_file() or (SRC / Path(*sub.split("."))).is_dir():
                    out.add(sub)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted((SRC / "ups").rglob("*.py"))}


def test_every_module_has_a_layer():
    for mod in graph():
        layer_of(mod)


def test_no_module_imports_a_layer_above_it():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})")
            for prefix, banned in FORBIDDEN.items():
                if mod.startswith(prefix + ".") and layer_of(dep) == layer_of(banned):
                    bad.append(f"{mod} imports {dep}: training and evaluation do not import each other")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(g.get(mod, ())):
            if dep not in g or dep == mod or mod.startswith(dep + "."):
                continue  # a package's own __init__ importing itself is no cycle
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[mod] = 2

    for mod in g:
        if mod not in state:
            visit(mod, [mod])


def test_the_checker_sees_a_violation(tmp_path):
    """The parser finds lazy imports inside functions too (what the real violations looked like)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ups.training.stage import STAGES\n    import ups.cli\n")
    assert imports_of(f) >= {"ups.training.stage", "ups.cli"}
    assert layer_of("ups.training.stage") > layer_of("ups.config")
    assert layer_of("ups.eval.metrics") < layer_of("ups.training") < layer_of("ups.eval.run_eval")
