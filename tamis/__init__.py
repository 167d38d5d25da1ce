"""tamis: pick the training data worth training on.

``tamis.select(...)`` scores a pool with pluggable selectors on Apache Beam and writes Parquet
shards with the scores, and the selection beside them; ``tamis.add_task(out, {...})`` adds a
target task without scoring the pool again; ``tamis.load_selected(out)`` reads the selection
back for a trainer. Heavy libraries load only when a run needs them.
"""
__version__ = "0.1.0"

__all__ = ["select", "reselect", "add_task", "load_selected", "read_run", "__version__"]


def __getattr__(name):
    if name in ("select", "reselect", "add_task", "load_selected", "read_run", "load_config"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tamis' has no attribute {name!r}")
