"""Selectors by name: the built-ins, plus third-party ones from the ``tamis.selectors``
entry-point group. Nothing is ever imported from a path given in a config."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Selector

ENTRY_POINT_GROUP = "tamis.selectors"

# name -> "module:Class"; imported only when asked for, so listing stays fast.
BUILTIN = {
    "rds": "tamis.selectors.rds:RDSSelector",
    "less": "tamis.selectors.less:LessSelector",
    "kmeans": "tamis.selectors.kmeans:KMeansSelector",
    "irt": "tamis.selectors.irt:IRTSelector",
    "color": "tamis.selectors.color:ColorFilterSelector", "el2n": "tamis.selectors.el2n:EL2NSelector", "grand": "tamis.selectors.el2n:GraNdSelector",
}


class UnknownSelectorError(ConfigError, KeyError):
    """No selector is registered under this name (a KeyError too, as a mapping lookup)."""


def _load(ref: str) -> type[Selector]:
    module, _, attr = ref.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Selector)):
        raise TypeError(f"{ref} is not a tamis Selector subclass")
    return cls


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every selector name that :func:`get` can load."""
    return sorted(set(BUILTIN) | set(_plugins()))


def get(name: str) -> type[Selector]:
    """The selector class registered under ``name``."""
    ref = BUILTIN.get(name) or _plugins().get(name)
    if ref is None:
        raise UnknownSelectorError(f"unknown selector {name!r}; available: {', '.join(available())}")
    cls = _load(ref)
    if cls.name != name:
        raise TypeError(f"{ref} declares name {cls.name!r} but is registered as {name!r}")
    return cls


def create(name: str, params: dict | None = None) -> Selector:
    """Build a selector from its name and a parameter mapping."""
    return get(name).from_params(params or {})
