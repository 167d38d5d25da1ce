"""Selectors: each scores records for one paper's criterion. One module per selector."""
from .base import PoolSample, Prepared, RunContext, Selector
from .registry import available, create, get

__all__ = ["PoolSample", "Prepared", "RunContext", "Selector", "available", "create", "get"]
