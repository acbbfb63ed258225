"""errors.py's promise: every exception edgefleet's server side defines is an ``EdgefleetError``, so
the CLI prints any of them as one line; the SDK keeps its own root, ``EdgefleetClientError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edgefleet
from edgefleet.client.errors import EdgefleetClientError
from edgefleet.errors import EdgefleetError


def _modules():
    for info in pkgutil.walk_packages(edgefleet.__path__, "edgefleet."):
        if not info.name.endswith("__main__") and not info.name.startswith("edgefleet._proto"):
            yield importlib.import_module(info.name)


def test_every_exception_defined_here_is_an_edgefleet_error() -> None:
    outside = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for module in _modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and issubclass(cls, BaseException)
        and not issubclass(cls, (EdgefleetError, EdgefleetClientError))
    )
    assert not outside, f"exceptions outside the hierarchy: {outside}"
