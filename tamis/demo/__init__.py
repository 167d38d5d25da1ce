"""A small demo pool that ships with tamis: 2,000 WordNet definitions as chat records, a
few broken lines, and two target tasks (food, animal). WordNet 3.0 copyright 2006 Princeton
University, distributed under the WordNet licence (see NOTICE in this folder)."""
from __future__ import annotations

import importlib.resources


def demo_dir() -> str:
    return str(importlib.resources.files("tamis.demo"))


def demo_config(out: str, overwrite: bool = False, **overrides):
    """The demo run's config. Rerunning into its own folder resumes it; a folder that holds
    another run is refused unless ``overwrite``."""
    from ..api import load_config

    d = demo_dir()
    return load_config({
        "pool": [f"{d}/pool.jsonl.gz"],
        "target": {"food": f"{d}/food_dev.jsonl", "animal": f"{d}/animal_dev.jsonl"},
        "selector": ["rds"],
        "budget": 0.05,
        "out": out,
        "shard_rows": 500,
        "overwrite": overwrite,
    }, **overrides)
