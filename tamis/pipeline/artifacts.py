"""What a selector's ``prepare()`` leaves on the launcher's disk, made reachable by every worker.

On Dataflow, Flink or an EXTERNAL worker pool the launcher and the workers share no disk, only
the run folder's filesystem. So before scoring, every local file or folder that a prepared record
names (proxies and their checkpoints, LoRA adapters and Adam moments, tokenizers, heads,
centroids) is published under ``OUT/_work/artifacts/<sha16>/<name>`` and the record is rewritten
to point there. Each worker copies what it needs to its own disk once (a lock per machine), checks
the copy's sha256 against the published name, and reports it with the models it loaded.

Local runners share the launcher's disk: nothing is copied for them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..io.filesystems import publish, tree_digest
from ..io.runfolder import RunFolder
from ..models.loading import localize
from ..selectors.base import Prepared
from .options import check_prepared, local_paths, workers_elsewhere

ARTIFACTS = "_work/artifacts"
_MARK = f"/{ARTIFACTS}/"


def prepare_for_workers(plan, folder: RunFolder) -> tuple[dict[str, Prepared | None], list[dict]]:
    """Each selector's ``prepare``, then, for workers that share no disk with this machine, its
    files published under the run folder; a record that would still hand them a local path is
    refused with one line. Returns the records and what was published."""
    prepared = plan.prepare()
    artifacts: list[dict] = []
    if workers_elsewhere(plan.config):
        prepared, artifacts = publish_prepared(prepared, folder)
    check_prepared(plan.config, prepared)
    return prepared, artifacts


def publish_prepared(prepared: dict[str, Prepared | None], folder: RunFolder) -> tuple[dict[str, Any], list[dict]]:
    """The prepared records with every local path replaced by its published copy, and what was published."""
    data = {name: None if rec is None else rec.to_json() for name, rec in prepared.items()}
    found = sorted({p for p in local_paths(data) if os.path.exists(p)}, key=len)
    roots: dict[str, dict] = {}  # local root -> its published description
    for path in found:
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            roots[path] = publish(path, folder.join(ARTIFACTS))

    def rewrite(value):
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rewrite(v) for v in value]
        if isinstance(value, str):
            for root, info in roots.items():
                if value == root or value.startswith(root.rstrip("/") + "/"):
                    return info["uri"] + value[len(root):]
        return value

    return ({name: None if rec is None else type(rec).from_json(rewrite(data[name])) for name, rec in prepared.items()},
            list(roots.values()))


def localize_prepared(prepared: Prepared | None, used: list[dict] | None = None) -> Prepared | None:
    """On a worker: every published artifact the record names, copied to this machine once and checked."""
    if prepared is None:
        return None
    data = prepared.to_json()
    local = _localize(data, used)
    return prepared if local == data else type(prepared).from_json(local)


def _localize(prepared: Any, used: list[dict] | None) -> Any:
    if isinstance(prepared, dict):
        return {k: _localize(v, used) for k, v in prepared.items()}
    if isinstance(prepared, (list, tuple)):
        return [_localize(v, used) for v in prepared]
    if not (isinstance(prepared, str) and "://" in prepared and _MARK in prepared):
        return prepared
    base, _, rest = prepared.partition(_MARK)
    sha16, _, rest = rest.partition("/")
    name, _, below = rest.partition("/")
    uri = f"{base}{_MARK}{sha16}/{name}"
    local = localize(uri)
    digest, size = tree_digest(local)
    if not digest.startswith(sha16):
        raise OSError(f"artifact {uri}: the copy at {local} has sha256 {digest[:16]}…, not the published {sha16}…")
    if used is not None and not any(u["uri"] == uri for u in used):
        used.append({"uri": uri, "local": local, "sha256": digest, "bytes": size})
    return str(Path(local) / below) if below else local


