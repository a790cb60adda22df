"""The package's shape: rooms (sub-packages) in layers that import only downwards, no import cycles
(imports inside functions included), names imported from the module that defines them, the public
API, and old import paths that still work."""

from __future__ import annotations

import ast
from pathlib import Path

import augkit

PKG = Path(augkit.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Every augkit module -> the augkit modules it imports anywhere (top level or in a function)."""
    files = {(_module_name(p)): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(mod, node, path.name == "__init__.py"):
                    if target in files and target != mod and target != "augkit":
                        graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_import_graph_sees_known_edges():
    graph = import_graph()
    assert "augkit.io.images" in graph["augkit.offline.run"]
    assert "augkit.errors" in graph["augkit.io.images"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


#: The layers, lowest first. A module may import modules of its own room and of lower layers only;
#: rooms on one layer (models/offline, training/infer) do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("io",),
    ("recipe",),
    ("labels",),
    ("models", "offline"),
    ("training", "infer"),
    ("report",),
    ("commands",),
]
#: top-level modules that belong to the command line, not to the shared basics
COMMAND_MODULES = {"augkit.cli", "augkit.__main__"}


def room_of(module: str) -> str:
    parts = module.split(".")
    if module in COMMAND_MODULES:
        return "commands"
    if len(parts) >= 3 or (len(parts) == 2 and (PKG / parts[1]).is_dir()):
        return parts[1]
    return "core"


def layer_of(room: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"room {room!r} is in no layer: add it to LAYERS and to docs/architecture.md")


def test_every_sub_package_is_a_room_in_a_layer():
    rooms = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == {r for layer in LAYERS for r in layer} - {"core"}
    for room in rooms:
        doc = ast.get_docstring(ast.parse((PKG / room / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"augkit/{room}/__init__.py says what the room is for"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for mod, targets in graph.items():
        if mod == "augkit":  # the facade imports lazily, by name
            continue
        src = room_of(mod)
        for t in targets:
            dst = room_of(t)
            if src != dst and layer_of(dst) >= layer_of(src):
                wrong.append(f"{mod} ({src}) imports {t} ({dst})")
    return sorted(wrong)


def test_layers_import_only_downwards():
    wrong = layer_violations(import_graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_layer_check_catches_upward_and_sideways_imports():
    assert layer_violations({"augkit.io.images": {"augkit.training.loop"}}) == [
        "augkit.io.images (io) imports augkit.training.loop (training)"
    ]
    assert layer_violations({"augkit.infer.engine": {"augkit.training.dataset"}})  # peers on one layer
    assert layer_violations({"augkit.errors": {"augkit.recipe.api"}})  # core is the bottom
    assert not layer_violations({"augkit.infer.engine": {"augkit.models.checkpoint", "augkit.io.images"}})


def _top_level_names(path: Path) -> tuple[set[str], bool]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    lazy = False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            lazy |= node.name == "__getattr__"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names, lazy


def test_names_come_from_the_module_that_defines_them():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    defined = {m: _top_level_names(p) for m, p in files.items()}
    wrong = []
    for path in list(PKG.rglob("*.py")) + list(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and not node.level and node.module in files):
                continue
            names, lazy = defined[node.module]
            for a in node.names:
                if a.name in names or f"{node.module}.{a.name}" in files or lazy:
                    continue
                wrong.append(f"{path.name}:{node.lineno}: {a.name} is not defined in {node.module}")
    assert not wrong, "\n".join(wrong)


def test_public_api_is_small_lazy_and_complete():
    import subprocess
    import sys

    code = (
        "import sys, augkit\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'import augkit loads torch or cv2'\n"
        "names = [n for n in augkit.__all__ if n != '__version__']\n"
        "print(' '.join(sorted(names)))\n"
        "for n in names: assert callable(getattr(augkit, n)), n\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == sorted(
        "load_recipe augment preview AugmentedImageFolder train TrainConfig predict evaluate "
        "export_onnx TTAWrapper list_ops list_models".split()
    )


def test_old_flat_import_paths_still_work_and_say_where_things_moved():
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import augkit\n"
        "try:\n"
        "    import augkit.policy_transform\n"
        "except DeprecationWarning as e:\n"
        "    print(e)\n"
        "warnings.simplefilter('ignore')\n"
        "import augkit.policy_transform as old\n"
        "from augkit.recipe.policies import transform as new\n"
        "assert old is new\n"
        "from augkit.augment import augment\n"
        "assert augkit.augment is augment and callable(augkit.augment), augkit.augment\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "augkit.policy_transform moved to augkit.recipe.policies.transform" in out.stdout


def test_architecture_doc_lists_every_module_and_only_real_ones():
    import re

    doc = (PKG.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc.split("<!-- module-list")[1].split("<!-- end module-list -->")[0]
    listed = set(re.findall(r"^\| `(augkit/[^`]+)`", table, flags=re.M))
    on_disk = {
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if not (p.name == "__init__.py" and p.parent != PKG)
        and p.parent.name != "commands"
        and p.parent.name != "builtin"
    }
    wildcard = {w for w in listed if "*" in w or w.endswith("/")}
    assert not (listed - wildcard) - on_disk, (
        f"docs/architecture.md lists modules that do not exist: {sorted((listed - wildcard) - on_disk)}"
    )
    assert not on_disk - listed, f"modules missing from docs/architecture.md: {sorted(on_disk - listed)}"
    for w in wildcard:
        assert list(PKG.parent.glob(w.rstrip("/") if w.endswith("/") else w)), w
