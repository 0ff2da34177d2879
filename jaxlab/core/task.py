"""The one place a config names code: `config.task` is the module the binaries import."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType

import ml_collections
from absl import flags

# The module of a task each binary imports, and the function it calls there.
ENTRY_POINTS = {
    "train": "train_and_evaluate",
    "evaluate": "evaluate",
    "steps": "benchmark_setup",
    "data": "prepare",
    "predict": "predict",
    "study": "main",
}
CONFIG_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "configs"


def import_task(config: ml_collections.ConfigDict, module: str) -> ModuleType:
    """Imports `<config.task>.<module>` (e.g. jaxlab.glitch.train) and checks its entry point."""
    name = config.get("task", "")
    if not name:
        raise ValueError("config.task is empty: set it to a task package, e.g. 'jaxlab.glitch'.")
    full_name = f"{name}.{module}"
    try:
        task_module = importlib.import_module(full_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"config.task = {name!r}: cannot import {full_name}: {e}.") from e
    entry_point = ENTRY_POINTS[module]
    if not callable(getattr(task_module, entry_point, None)):
        raise ValueError(f"{full_name} has no function {entry_point}(...).")
    return task_module


def config_names() -> list[str]:
    """The task configs that ship inside the package (`jaxlab/configs/<name>.py`)."""
    return sorted(
        p.stem for p in CONFIG_PACKAGE.glob("*.py") if p.stem not in ("__init__", "common")
    )


def config_variants(file: pathlib.Path) -> tuple[str, ...]:
    """The variants a config file accepts, read from its source without running it.

    A module-level `VARIANTS = ("demo", ...)` when the file has one; else the default of
    `get_config`'s argument followed by every string that argument is compared with
    (`arg == "paper"`, `arg in ("demo", "tiny")`). Empty when neither is found (a user's file).
    """
    tree = ast.parse(pathlib.Path(file).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "VARIANTS" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    function = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_config"), None
    )
    if function is None or not function.args.args:
        return ()
    arg = function.args.args[0].arg
    variants = [d.value for d in function.args.defaults if isinstance(d, ast.Constant)]
    for node in ast.walk(function):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name):
            if node.left.id != arg:
                continue
            for comparator in node.comparators:
                items = (
                    comparator.elts
                    if isinstance(comparator, ast.Tuple | ast.List)
                    else [comparator]
                )
                variants += [c.value for c in items if isinstance(c, ast.Constant)]
    return tuple(dict.fromkeys(v for v in variants if isinstance(v, str)))


def config_summary(file: pathlib.Path) -> str:
    """The first line of a config file's docstring."""
    docstring = ast.get_docstring(ast.parse(pathlib.Path(file).read_text())) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


def configs_help() -> str:
    """One line per packaged config: name, variants (default first), summary; for --help."""
    lines = []
    for name in config_names():
        file = CONFIG_PACKAGE / f"{name}.py"
        lines.append(f"  {name:<11} {', '.join(config_variants(file))}")
        lines.append(f"  {'':<11} {config_summary(file)}")
    return "\n".join(lines)


def config_file(spec: str) -> tuple[pathlib.Path, str]:
    """`"glitch:demo"` or `"path/to/file.py:demo"` -> (config file, variant).

    A bare name resolves to the package's `jaxlab/configs/<name>.py` from any working directory;
    anything with a `/` or ending in `.py` is a file path (relative to the working directory,
    then to the repository root).
    """
    path, _, variant = spec.partition(":")
    if "/" not in path and not path.endswith(".py"):
        file = CONFIG_PACKAGE / f"{path}.py"
        if path in ("common", "__init__") or not file.exists():
            raise FileNotFoundError(
                f"Unknown config {path!r}; the configs are: {', '.join(config_names())} "
                "(or give a file path, e.g. my_configs/glitch.py:demo)."
            )
        _check_variant(file, path, variant)
        return file, variant
    file = pathlib.Path(path)
    if not file.is_absolute() and not file.exists():
        file = pathlib.Path(__file__).resolve().parents[2] / path
    if not file.exists():
        raise FileNotFoundError(
            f"Config file {path} does not exist (packaged configs: {', '.join(config_names())})."
        )
    return file, variant


def _check_variant(file: pathlib.Path, name: str, variant: str) -> None:
    variants = config_variants(file)
    if variant and variants and variant not in variants:
        raise FileNotFoundError(
            f"config {name}: unknown variant {variant!r}; its variants are: {', '.join(variants)}."
        )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`"glitch:demo"` (or a file path with `:variant`) -> its `get_config("demo")`, no flags.

    For code that runs several configs in one process (demo, benchmark, tests).
    """
    file, variant = config_file(spec)
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad `--config...` value into one clear line and exit 1.

    ml_collections raises AttributeError/KeyError/TypeError from deep inside for an unknown key or
    a value of the wrong type; pass this as `app.run(main, flags_parser=parse_flags)`.
    """
    try:
        argv = [argv[0], *(_resolve_config_flag(arg) for arg in argv[1:])]
    except FileNotFoundError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        lines = [line.strip("'\\\" ") for line in str(e).replace("\\n", "\n").splitlines()]
        lines = [line for line in lines if line]
        if isinstance(e, AttributeError | KeyError):
            detail = _unknown_key(argv) or f"unknown config key '{lines[0]}'. " + " ".join(
                lines[1:]
            )
        else:
            detail = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
        overrides = [a for a in argv[1:] if a.startswith("--config")]
        print(f"FATAL config error: {detail} (flags: {' '.join(overrides)})", file=sys.stderr)
        sys.exit(1)


def _resolve_config_flag(arg: str) -> str:
    """`--config=glitch:demo` -> `--config=/abs/path/jaxlab/configs/glitch.py:demo`."""
    if not arg.startswith("--config="):
        return arg
    file, variant = config_file(arg.removeprefix("--config="))
    return f"--config={file}:{variant}" if variant else f"--config={file}"


def _unknown_key(argv: list[str]) -> str | None:
    """'unknown config key train.nope; train has: ...' for the first override naming no key."""
    spec = next((a.removeprefix("--config=") for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    try:
        config = load_config(spec)
    except Exception:  # the config itself fails: leave the message to the caller
        return None
    for arg in argv:
        if not arg.startswith(("--config.", "--noconfig.")):
            continue
        key = arg.split("config.", 1)[1].partition("=")[0]
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                parent = ".".join(parts[:depth]) or "the config"
                keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f" Did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
                return f"unknown config key {key!r}.{hint} {parent} has: {', '.join(keys)}."
            node = node[part]
    return None
