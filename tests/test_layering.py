"""The import graph is the one README draws: every import points down the layers.

    errors -> backend -> budgets -> leaves (batching, checks, io, parallel) -> data, models -> configs, jacobian
    -> metrics -> attacks -> train -> evaluation, cli

Every ``import`` statement in the package is checked, including the ones inside
functions (a lazy import is still a dependency). Modules of one unit (one
subpackage) may import each other; the facade ``jacuap/__init__.py`` is lazy and
may name anything, but no module inside the package may import through it.
"""

import ast
import os

import pytest

import jacuap

PACKAGE_DIR = os.path.dirname(jacuap.__file__)

LAYERS = [
    ("errors",),
    ("backend",),
    ("budgets",),
    ("batching", "checks", "io", "parallel"),
    ("data", "models", "summaries"),
    ("configs", "jacobian"),
    ("metrics",),
    ("attacks",),
    ("train",),
    ("evaluation", "cli"),
    ("programs",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 420  # "about 400"


def _modules():
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _unit(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imported_units(tree: ast.AST):
    """(line, unit) for each jacuap module a file imports; unit None = the facade."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jacuap":
                    yield node.lineno, _unit(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "jacuap":
                for alias in node.names:  # `from jacuap import attacks` names a submodule
                    unit = alias.name if alias.name in RANK else None
                    yield node.lineno, unit
            elif node.module.split(".")[0] == "jacuap":
                yield node.lineno, _unit(node.module)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m, _ in _modules()} - {None}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: v if "." in v and "/" not in v else "")
def test_imports_point_down_the_layers(module, path):
    own = _unit(module)
    if own is None:
        return  # the facade
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for line, unit in _imported_units(tree):
        assert unit is not None, f"{path}:{line} imports through the jacuap facade; import the submodule"
        if unit == own:
            continue
        assert RANK[unit] < RANK[own], (
            f"{path}:{line}: {own} (layer {RANK[own]}) imports {unit} (layer {RANK[unit]}), against the order")


def test_no_module_is_over_about_400_lines():
    long = {}
    for _, path in _modules():
        with open(path) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[os.path.relpath(path, PACKAGE_DIR)] = n
    assert not long, long


def test_importing_the_package_is_light():
    # The facade is lazy: `import jacuap` must not pull in JAX, orbax or matplotlib.
    import subprocess
    import sys

    code = ("import sys, jacuap; heavy = [m for m in ('jax', 'orbax', 'matplotlib', 'tensorflow_datasets', "
            "'flax') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
