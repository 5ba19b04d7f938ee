"""The import layers of ARCHITECTURE.md, read from the source with `ast`: no module imports a higher layer.

Every `import zscir.x` / `from zscir.x import ...` counts, at the top of a file or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "zscir"

# Highest first; a module may import its own layer and every layer below it.
LAYERS: list[tuple[str, ...]] = [
    ("zscir.cli", "zscir.__main__", "zscir.commands"),
    ("zscir.web",),
    ("zscir.demo",),
    ("zscir.training",),
    ("zscir.evaluation",),
    ("zscir.oti",),
    ("zscir.retrieval",),
    ("zscir.generation",),
    ("zscir.compose",),
    ("zscir.models", "zscir.data"),
    ("zscir.registry", "zscir.prompts", "zscir.recipes", "zscir.utils", "zscir.errors"),
    ("zscir",),  # the package face (`__version__`)
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that owns `module`."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and to ARCHITECTURE.md)")
    return best[0]


def module_name(path: Path, src: Path = SRC) -> str:
    """`src/zscir/a/b.py` -> "zscir.a.b" (`src` is the package folder)."""
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(imported zscir module, line) for every import statement of the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "zscir"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "zscir":
                found.append((target, node.lineno))
    return found


def upward_imports() -> dict[tuple[str, str], str]:
    """{(importer, imported): "file:line"} of every import that points to a higher layer."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        importer = module_name(path)
        for imported, line in internal_imports(path):
            if layer_of(imported) < layer_of(importer):
                found.setdefault((importer, imported), f"{path.relative_to(SRC.parent)}:{line}")
    return found


def test_the_layer_reader_sees_an_upward_import(tmp_path):
    """The reader itself: a lower module importing a higher one is caught, relative imports resolved."""
    module = tmp_path / "zscir" / "models" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..evaluation import runner\n\ndef f():\n    import zscir.demo.pipeline\n")
    imports = internal_imports(module, tmp_path / "zscir")
    assert imports == [("zscir.evaluation", 1), ("zscir.demo.pipeline", 4)]
    assert all(layer_of(target) < layer_of("zscir.models.bad") for target, _ in imports)
    assert (layer_of("zscir.compose") > layer_of("zscir.oti.store") > layer_of("zscir.evaluation.fusion")
            > layer_of("zscir.training.phi"))


def test_every_module_belongs_to_a_layer():
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))


def test_no_module_imports_a_higher_layer():
    found = upward_imports()
    assert not found, "imports pointing up the layers (see ARCHITECTURE.md):\n" + "\n".join(
        f"  {where}: {a} -> {b}" for (a, b), where in sorted(found.items()))


# zscir imports a library module makes inside a function, each with its reason (everything else goes at the
# top, so that a file's header lists what it depends on; the commands keep their run-time imports for a
# light `zscir --help`, and `try: import ... except ImportError` marks an optional part).
LAZY_ON_PURPOSE: dict[tuple[str, str], str] = {
    ("zscir.training.config", "zscir.training.losses"): "the configs stay torch-free for the commands' --help",
}


def function_level_imports(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(zscir module, line) of the imports made inside a function, outside a `try` (optional) block."""
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.Try) and child in node.body:
                continue
            if in_function and isinstance(child, ast.ImportFrom) and not child.level and \
                    (child.module or "").split(".")[0] == "zscir":
                found.append((child.module, child.lineno))
            elif in_function and isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names if a.name.split(".")[0] == "zscir")
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_function_level_imports_are_seen(tmp_path):
    module = tmp_path / "zscir" / "models" / "lazy.py"
    module.parent.mkdir(parents=True)
    module.write_text("import zscir.errors\n\ndef f():\n    from zscir.data import images\n    try:\n"
                      "        import zscir.demo\n    except ImportError:\n        pass\n")
    assert function_level_imports(module, tmp_path / "zscir") == [("zscir.data", 4)]


def test_library_modules_import_zscir_at_the_top():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        if name.startswith(("zscir.commands", "zscir.cli", "zscir.__main__")):
            continue
        for imported, line in function_level_imports(path):
            if (name, imported) not in LAZY_ON_PURPOSE:
                found.setdefault((name, imported), f"{path.relative_to(SRC.parent)}:{line}")
    assert not found, "zscir imports inside functions (move them to the top of the file):\n" + "\n".join(
        f"  {where}: {a} imports {b}" for (a, b), where in sorted(found.items()))
