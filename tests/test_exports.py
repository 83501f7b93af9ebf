"""The public API: ``__all__`` lists are accurate and sorted, public classes are documented."""

from __future__ import annotations

import inspect
import re
from types import ModuleType

import pytest

import coordactors
import coordactors.errors
import coordactors.events
import coordactors.messages

MODULES = [coordactors, coordactors.messages, coordactors.events, coordactors.errors]
_ids = [m.__name__ for m in MODULES]


def _public_classes(module: ModuleType) -> dict[str, type]:
    """Public classes reachable as attributes of ``module`` that belong to coordactors."""
    found = {}
    for name in dir(module):
        value = getattr(module, name)
        if not name.startswith("_") and inspect.isclass(value) and value.__module__.startswith("coordactors"):
            found[name] = value
    return found


def _isort_key(name: str) -> tuple[int, str]:
    """isort-style order, as ruff's RUF022 keeps ``__all__``: CONSTANTS, then Classes, then the rest."""
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module", MODULES, ids=_ids)
def test_all_names_only_things_that_exist(module: ModuleType) -> None:
    names = module.__all__
    assert isinstance(names, list) and names
    assert all(isinstance(name, str) for name in names)
    assert len(set(names)) == len(names), f"duplicates in {module.__name__}.__all__"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names missing attributes: {missing}"
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)  # noqa: S102 - the star import users would write
    assert set(namespace) - {"__builtins__"} == set(names)


@pytest.mark.parametrize(
    "module",
    MODULES,
    ids=_ids,
)
def test_all_is_sorted(module: ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key), f"{module.__name__}.__all__ is not sorted"


@pytest.mark.parametrize("module", MODULES, ids=_ids)
def test_classes_defined_in_the_module_are_exported(module: ModuleType) -> None:
    own = {name for name, cls in _public_classes(module).items() if cls.__module__ == module.__name__}
    assert own <= set(module.__all__), f"public classes missing from {module.__name__}.__all__: {sorted(own - set(module.__all__))}"


@pytest.mark.parametrize("module", MODULES, ids=_ids)
def test_public_classes_have_docstrings(module: ModuleType) -> None:
    classes = _public_classes(module)
    classes.update({name: getattr(module, name) for name in module.__all__ if inspect.isclass(getattr(module, name))})
    assert classes
    undocumented = sorted(name for name, cls in classes.items() if not (cls.__dict__.get("__doc__") or "").strip())
    assert not undocumented, f"classes without a docstring of their own in {module.__name__}: {undocumented}"


@pytest.mark.parametrize("module", MODULES, ids=_ids)
def test_exported_functions_have_docstrings(module: ModuleType) -> None:
    functions = {name: getattr(module, name) for name in module.__all__ if inspect.isfunction(getattr(module, name))}
    undocumented = sorted(name for name, fn in functions.items() if not (fn.__doc__ or "").strip())
    assert not undocumented, f"functions without a docstring in {module.__name__}: {undocumented}"
