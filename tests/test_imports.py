"""`import jgrad` is cheap: subpackages and heavy dependencies load only when they are used."""

import json
import subprocess
import sys

import pytest

HEAVY = ("jax", "flax", "optax", "orbax", "scipy", "yaml", "torch", "networkx", "tqdm")


def _modules_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def _top_level(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


def test_import_jgrad_loads_no_subpackage_and_no_heavy_dependency():
    modules = _modules_after("import jgrad")
    assert not _top_level(modules)
    assert not {name for name in modules if name.startswith("jgrad.")}


def test_jgrad_cli_help_imports_neither_jax_nor_the_training_stack():
    modules = _modules_after("import jgrad.cli\n"
                             "try:\n    jgrad.cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert not _top_level(modules)


def test_graph_and_ops_load_jax_only():
    modules = _modules_after("import jgrad\njgrad.Graph.from_edges([0], [1], n_nodes=2)\njgrad.ops.spmm")
    assert "jax" in modules
    loaded = {name.split(".")[0] for name in _top_level(modules)}
    assert loaded <= {"jax"}, loaded
    assert not {name for name in modules
                if name.split(".")[:2] in (["jgrad", "train"], ["jgrad", "attacks"], ["jgrad", "nn"],
                                           ["jgrad", "data"], ["jgrad", "parallel"], ["jgrad", "bench"])}


# In this order no name's subpackage imports the module of a later name, so one process checks them all.
LAZY_NAMES = [("data", "jgrad.data"), ("edge_grad", "jgrad.gradients"), ("nn", "jgrad.nn"), ("train", "jgrad.train")]


@pytest.fixture(scope="module")
def lazy_loads() -> dict[str, list[bool]]:
    """In one fresh process, each lazy name accessed in turn: ``{name: [module loaded before, after]}``."""
    lines = ["import sys, json, jgrad", "loads = {}"]
    for name, module in LAZY_NAMES:
        lines.append(f"before = {module!r} in sys.modules")
        lines.append(f"jgrad.{name}")
        lines.append(f"loads[{name!r}] = [before, {module!r} in sys.modules]")
    lines.append("print(json.dumps(loads))")
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize("name, module", LAZY_NAMES)
def test_lazy_names_resolve_on_first_use(lazy_loads, name, module):
    assert lazy_loads[name] == [False, True], f"{module} loaded before jgrad.{name}, after: {lazy_loads[name]}"


def test_unknown_attribute_is_a_clear_attribute_error():
    import jgrad

    with pytest.raises(AttributeError, match="module 'jgrad' has no attribute 'nope'"):
        jgrad.nope  # noqa: B018


def _imports_between_packages() -> list[tuple[str, str, str]]:
    """Every import in src/jgrad of another jgrad package: ``(file, importing package, imported module)``.

    Relative imports are resolved against the file's package; lazy imports inside functions count too.
    """
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "jgrad"
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        package = ["jgrad", *parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = [*base, *(node.module.split(".") if node.module else [])]
                targets = [module + [alias.name] for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.split(".") for alias in node.names]
            else:
                continue
            for target in targets:
                if target[0] == "jgrad" and len(target) > 2 and len(package) > 1 and target[1] != package[1]:
                    found.append((str(path.relative_to(root)), package[1], ".".join(target)))
    return found


def test_packages_share_private_code_only_through_jgrad_src():
    """A package takes another package's public names only; shared internals live in `jgrad._src`,
    which itself builds on no other jgrad package."""
    found = _imports_between_packages()
    assert any(target.startswith("jgrad._src.") for _, _, target in found)  # the scan sees the imports
    private = [(file, target) for file, package, target in found
               if not target.startswith("jgrad._src") and any(part.startswith("_") for part in target.split(".")[2:])]
    assert not private, private
    upward = [(file, target) for file, package, target in found if package == "_src"]
    assert not upward, upward
