"""The dependency direction, frozen: errors/config -> data -> models -> device -> inference ->
{training, evaluation, saliency} -> {report, tuning} -> serving -> cli. Every import of cxrlab's own modules,
lazy ones inside functions included, must point down this order (or within its own part), and no
two modules may import each other, directly or around a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrlab"

# part of cxrlab -> its layer; parts in one layer are siblings and must not import each other
LAYERS = {
    "errors": 0, "allocator": 0, "display": 0, "config": 0.1, "runs": 0.2, "checkpoint": 0.3,  # the base, in its own order
    "data": 1,
    "models": 2,
    "accel": 2.5,  # CPU speed-ups applied to the plain models from outside
    "device": 3,
    "inference": 4,
    "training": 5, "evaluation": 5, "saliency": 5,
    "report": 6, "tuning": 6,
    "serving": 7, "demo": 7,
    "cli": 8, "__main__": 8.1, "__init__": 8.1,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """cxrlab modules `path` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] == "cxrlab" and t != name}
    return {t if t in known else t.rsplit(".", 1)[0] for t in found} - {name}


def part(name: str) -> str:
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_part_has_a_layer():
    assert {part(m) for m in modules()} <= set(LAYERS), sorted({part(m) for m in modules()} - set(LAYERS))


def test_imports_point_down_the_layers():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            src, dst = part(name), part(target)
            if src == dst or dst == "__init__" and target == "cxrlab":
                continue
            if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src]):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own modules is not a cycle unless one imports the package back
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_importing_cxrlab_changes_no_global_state():
    """A notebook that imports every cxrlab module keeps its matplotlib backend, Pillow's image-size
    limit and its C library's malloc settings."""
    import subprocess
    import sys

    # onnx_predict is a script shipped beside an export, run there, never imported as part of cxrlab
    names = sorted(m for m in modules() if m not in ("cxrlab.__main__", "cxrlab.serving.onnx_predict"))
    code = ("import importlib, matplotlib; matplotlib.use('svg'); from PIL import Image; limit = Image.MAX_IMAGE_PIXELS\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "from cxrlab import allocator\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert Image.MAX_IMAGE_PIXELS == limit, Image.MAX_IMAGE_PIXELS\n"
            "assert allocator._state == {}, allocator._state\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
