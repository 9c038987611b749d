"""The package's layers, as docs/ARCHITECTURE.md draws them: every module imports only from its own package or from
lower layers (imports inside functions included), and no modules import each other in a cycle."""
import ast
from pathlib import Path

import stacnas
import stacnas.kernels

ROOT = Path(stacnas.__file__).parent
# lowest first; `kernels` is the top-level kernels/ folder, installed as stacnas.kernels, `_C` the compiled extension
LAYERS = [{"names", "errors"}, {"files"}, {"kernels", "_C"}, {"fused"}, {"data", "ops"}, {"spaces", "genotypes"},
          {"nn"}, {"info"}, {"runtime"}, {"report"}, {"search", "train"}, {"bench"}, {"cli"}, {"__main__"}]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules():
    """{dotted name: path} of every module of stacnas (kernels/ under its installed name)."""
    found = {}
    kernels = Path(stacnas.kernels.__file__).parent
    for base, prefix in ((ROOT, "stacnas"), (kernels, "stacnas.kernels")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.setdefault(".".join((prefix, *parts)), path)
    return {**found, "stacnas._C": None}


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The stacnas modules `name` imports (a name imported from a package counts as its submodule when it is one)."""
    if path is None:  # the compiled extension
        return set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("stacnas"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0] if node.level > 1 else package,
                                              base]))
            if not base.startswith("stacnas"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    units = {_unit(name) for name in _modules()} - {"__init__"}
    assert units <= set(LAYER), f"modules in no layer: {sorted(units - set(LAYER))}"


def test_imports_go_down_the_layers():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        unit = _unit(name)
        if unit == "__init__":  # stacnas/__init__.py: the public API, above everything
            continue
        for target in _imports(name, path, modules):
            other = _unit(target)
            if other != unit and (other == "__init__" or LAYER[other] >= LAYER[unit]):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state = {}

    def visit(name, trail):
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(target):] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
