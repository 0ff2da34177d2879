"""Data flows one way: a task's demo-data writer (`synthetic.py`) may use the readers' format
facts, but no reader, evaluator or predictor depends on the writer.

Only `<task>/data.py` imports its task's `synthetic`, and only its demo-data functions
(`DEMO_DATA_FUNCTIONS`: `prepare` and what it or a benchmark uses to make the demo data) touch
it; a task's `format.py` (file names, variable names, decoding) imports no other task module.
Checked on the source with `ast`, so a lazy import inside a function counts too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxlab"
DEMO_DATA_FUNCTIONS = {"prepare", "write_synthetic", "simulated_events"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST) -> set[str]:
    """Dotted names of every module (or module member) the source imports, anywhere."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def synthetic_imports(tree: ast.AST) -> set[str]:
    """The `jaxlab.<task>.synthetic` modules the source imports."""
    return {
        ".".join(n.split(".")[:3])
        for n in imported_names(tree)
        if n.startswith("jaxlab.") and n.split(".")[2:3] == ["synthetic"]
    }


def uses_outside(tree: ast.AST, name: str, functions: set[str]) -> list[int]:
    """Lines where `name` is read outside the top-level functions named in `functions`."""
    allowed = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            allowed.update(id(n) for n in ast.walk(node))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id == name and id(node) not in allowed
    ]


def layering_errors(module: str, source: str) -> list[str]:
    """What `module` (dotted name, its source) breaks of the rules in the module docstring."""
    tree = ast.parse(source)
    errors = []
    for imported in sorted(synthetic_imports(tree)):
        task = imported.rsplit(".", 1)[0]
        if module == imported:
            continue
        if module != f"{task}.data":
            errors.append(f"{module} imports {imported} (only {task}.data's prepare may)")
            continue
        lines = uses_outside(tree, "synthetic", DEMO_DATA_FUNCTIONS)
        if lines:
            errors.append(
                f"{module} uses synthetic outside {sorted(DEMO_DATA_FUNCTIONS)} (lines {lines})"
            )
    if module.endswith(".format"):
        task = module.rsplit(".", 1)[0]
        others = [n for n in imported_names(tree) if n.startswith(f"{task}.")]
        if others:
            errors.append(f"{module} imports {sorted(others)}; a format module stands alone")
    return errors


def test_checker_catches_a_reader_that_imports_the_writer():
    reader = "from jaxlab.glitch import synthetic\nSPLITS = synthetic.SPLITS\n"
    assert layering_errors("jaxlab.glitch.data_index", reader)
    assert layering_errors("jaxlab.glitch.evaluate", "import jaxlab.glitch.synthetic\n")
    lazy = "def predict():\n    from jaxlab.sales.synthetic import ORDERS_FILE\n"
    assert layering_errors("jaxlab.sales.predict", lazy)
    outside = (
        "from jaxlab.example import synthetic\n"
        "def load(d):\n    return synthetic.split_path(d, 'train')\n"
        "def prepare(c, w):\n    synthetic.write_dataset(w)\n"
    )
    assert layering_errors("jaxlab.example.data", outside) == [
        f"jaxlab.example.data uses synthetic outside {sorted(DEMO_DATA_FUNCTIONS)} (lines [3])"
    ]
    assert not layering_errors("jaxlab.example.data", outside.replace("synthetic.split_path", "p"))
    assert layering_errors("jaxlab.example.format", "from jaxlab.example import data\n")


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_reader_depends_on_a_synthetic_writer(path):
    assert layering_errors(module_name(path), path.read_text()) == []


def test_every_task_with_a_writer_is_checked():
    writers = {module_name(p) for p in MODULES if p.name == "synthetic.py"}
    assert {f"jaxlab.{t}.synthetic" for t in ("example", "glitch", "neutrino", "sales")} <= writers
    assert "jaxlab.vegetation.synthetic" in writers and "jaxlab.weather.synthetic" in writers
