"""The run folder: the one place that knows a run's layout, its state record and its lock.

Layout of OUT. OUT is a literal path: ``*``, ``?`` and ``[`` in it are plain characters, never a
pattern (Beam's ``FileSystems.match`` and, on local and ``gs://`` paths, ``FileSystems.delete``
treat them as glob characters, so nothing here hands OUT to either unescaped)::

    OUT/.tamis.lock            who is writing: host, pid, start time
    OUT/shards/part-FFFF-CCCCC.parquet      the accepted rows and the scores pass 1 made (written once)
    OUT/attributes/selection/part-*.parquet  id, selected, rank, selected_for: rewritten by every selection
    OUT/attributes/task-<task>/part-*.parquet  id + the score columns of a task added by ``tamis add-task``
    OUT/rejects/*.parquet
    OUT/_work/plan.json        the resume key and what it covers
    OUT/_work/state.json       scoring -> selecting -> finished
    OUT/_work/targets.json     the target examples the run was scored with (reselect reads these)
    OUT/_work/...              selectors' work files (selection report, centroids)
    OUT/manifest.json          written when a run finishes

An attribute file holds the same rows as its chunk's shard, in the same order (Dolma's
attributes: columns kept beside the documents, never written into them), so changing the budget
or adding a task writes a few small files instead of the whole pool. :meth:`RunFolder.read_chunk`
joins them; a column an attribute file holds wins over a shard column of the same name.
    OUT/evaluate.json, OUT/report.html   written later by ``tamis evaluate`` / ``tamis report``

Rules that hold for every path, local, ``gs://`` or ``s3://``:

- Every write is atomic: a temporary ``*.inprogress`` name beside the file, then a rename.
- Nothing outside OUT is ever deleted, and inside OUT only the entries above. A layout entry
  that is a symlink is refused (a symlinked ``shards`` would send writes and deletes elsewhere).
- Readers act on the folder they are given, never on the path stored in the manifest.
- One writer at a time (see :class:`RunLock`): a second run into a folder in use fails at once
  with :class:`~tamis.errors.RunLockedError` naming the holder.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from ..errors import RunFolderError, RunLockedError, UnfinishedRunError
from .filesystems import (TEMP_SUFFIX, _fs, delete_files, exists, glob_escape, is_remote, match, read_bytes, read_parquet,
                          storage_error, write_bytes)

log = logging.getLogger(__name__)

SHARDS = "shards"
REJECTS = "rejects"
ATTRIBUTES = "attributes"
SELECTION = "selection"  # the attribute set every selection writes
TASK_PREFIX = "task-"  # attribute sets of tasks added after the run (tamis add-task)
WORK = "_work"
MANIFEST = "manifest.json"
LOCK = ".tamis.lock"
PLAN = f"{WORK}/plan.json"
STATE = f"{WORK}/state.json"
TARGETS = f"{WORK}/targets.json"
EVALUATE = "evaluate.json"
REPORT = "report.html"
# What belongs to a run: ``--overwrite`` deletes these and nothing else.
RUN_ENTRIES = (SHARDS, ATTRIBUTES, REJECTS, WORK, MANIFEST, EVALUATE, REPORT)

SCORING, SELECTING, FINISHED = "scoring", "selecting", "finished"
ADDING = "adding"  # tamis add-task is scoring new tasks (the run's other results stay as they were)
FINISH_HINT = "rerun `tamis select` with the same arguments to finish it"


def read_json(path: str) -> dict | None:
    data = read_bytes(path, missing_ok=True)
    return None if data is None else json.loads(data.decode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=2, default=str).encode("utf-8"))


def write_parquet(path: str, table, metadata: dict[bytes, bytes] | None = None) -> None:
    """A table as zstd Parquet at ``path``, atomically, with extra key-value metadata."""
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(path, buf.getvalue())


def content_digest(obj: Any) -> str:
    """sha256 of canonical JSON (the parsed target examples, a config)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the run folder ------------------------------------------------------------------------------

class RunFolder:
    """A run's folder: where each file lives, its state, its lock. Picklable (Beam workers use it)."""

    def __init__(self, out: str | os.PathLike, *, object_lock: bool | None = None):
        out = os.fspath(out) if out is not None else ""
        if not str(out).strip():
            raise RunFolderError("--out is empty: give the run folder's path")
        self.path = out.rstrip("/") or "/"
        self.remote = is_remote(self.path)
        # Object stores have no flock: they use the lock-object rule (see RunLock).
        self.object_lock = self.remote if object_lock is None else object_lock

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def __str__(self) -> str:
        return self.path

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    @property
    def work_dir(self) -> str:
        return self.join(WORK)

    def shard_path(self, chunk: str) -> str:
        return self.join(SHARDS, f"{chunk}.parquet")

    def attribute_path(self, name: str, chunk: str) -> str:
        """The attribute file of set ``name`` (``selection``, ``task-<task>``) for ``chunk``."""
        return self.join(ATTRIBUTES, name, f"{chunk}.parquet")

    def reject_path(self, name: str) -> str:
        return self.join(REJECTS, name if name.endswith(".parquet") else f"{name}.parquet")

    # -- listing (literal: the folder's name is never a pattern) --

    def _list(self, sub: str, prefix: str = "", suffix: str = "") -> list[str]:
        folder = self.join(sub)
        if self.remote:
            found = match(glob_escape(folder) + "/*")
            names = [p.rsplit("/", 1)[-1] for p in found]
        else:
            try:
                with os.scandir(folder) as entries:
                    names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                return []
        return sorted(f"{folder}/{n}" for n in names if n.startswith(prefix) and n.endswith(suffix))

    def shards(self) -> list[str]:
        return self._list(SHARDS, "part-", ".parquet")

    def rejects(self) -> list[str]:
        return self._list(REJECTS, "", ".parquet")

    def attribute_sets(self) -> list[str]:
        """Names of the attribute sets on disk (``selection``, ``task-<task>``...)."""
        folder = self.join(ATTRIBUTES)
        if self.remote:
            names = {p[len(folder) + 1:].split("/", 1)[0] for p in match(glob_escape(folder) + "/*/*.parquet")}
        else:
            try:
                with os.scandir(folder) as entries:
                    names = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
            except (FileNotFoundError, NotADirectoryError):
                return []
        return sorted(names)

    def match_columns(self, chunk: str | None = None) -> list[str]:
        """``matches_target`` and each added task's own ``matches_target_<task>``: a row equal to
        any of the run's target examples is never selected (by default). With ``chunk``, only the
        tasks whose file for that chunk is written (an add-task may be under way)."""
        sets = [n for n in self.attribute_sets() if n.startswith(TASK_PREFIX)]
        if chunk is not None:
            sets = [n for n in sets if exists(self.attribute_path(n, chunk))]
        return ["matches_target", *(f"matches_target_{n[len(TASK_PREFIX):]}" for n in sets)]

    def attribute_files(self, name: str) -> list[str]:
        return self._list(f"{ATTRIBUTES}/{name}", "part-", ".parquet")

    def chunk_names(self) -> list[str]:
        return [p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.shards()]

    def read_chunk(self, chunk: str, columns: list[str] | None = None, sets: list[str] | None = None):
        """One chunk's rows: its shard's columns joined with its attribute files' (all sets, or
        ``sets``), in shard order. ``columns`` picks columns (``id`` is always there to join on).

        An attribute file that does not hold exactly the shard's ids, in order, is refused: a
        mismatched join would attach scores or a selection to the wrong rows.
        """

        parts = []
        for name in (self.attribute_sets() if sets is None else sets):
            path = self.attribute_path(name, chunk)
            if exists(path):
                parts.append((path, read_parquet(path)))
            elif name == SELECTION:  # every shard has one once a selection ran: a missing one was deleted
                raise RunFolderError(f"{path} is missing (the selection of this shard was deleted): run "
                                     f"`tamis reselect {self.path} --budget ...` to write it again")
        provided = {c for _, t in parts for c in t.column_names if c != "id"}
        wanted = None if columns is None else list(dict.fromkeys(["id", *(c for c in columns if c not in provided)]))
        table = read_parquet(self.shard_path(chunk), wanted)
        table = table.drop_columns([c for c in table.column_names if c in provided])
        ids = table.column("id")
        for path, part in parts:
            if part.num_rows != table.num_rows or not part.column("id").equals(ids):
                raise RunFolderError(f"{path} does not hold the rows of {self.shard_path(chunk)} (its ids differ): "
                                     "the run folder was changed by hand; rerun the selection or the task")
            for name in part.column_names:
                if name != "id":
                    table = table.append_column(part.schema.field(name), part.column(name))
        if columns is not None:
            table = table.select(list(dict.fromkeys(["id", *columns])))
        return table

    def scored_chunks(self) -> set[str]:
        return {p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.shards()}

    def exists(self, rel: str = "") -> bool:
        return exists(self.join(rel) if rel else self.path)

    # -- whole files --

    def read_json(self, rel: str) -> dict | None:
        try:
            return read_json(self.join(rel))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunFolderError(f"{self.join(rel)} is damaged: {e}") from None

    def write_json(self, rel: str, obj: Any) -> None:
        write_json(self.join(rel), obj)

    def write_bytes(self, rel: str, data: bytes) -> None:
        write_bytes(self.join(rel), data)

    def read_manifest(self) -> dict | None:
        return self.read_json(MANIFEST)

    def read_shards(self, columns: list[str] | None = None):
        """Every row of the run, shards joined with their attributes (see :meth:`read_chunk`)."""
        import pyarrow as pa

        chunks = self.chunk_names()
        if not chunks:
            raise RunFolderError(f"no shards under {self.join(SHARDS)}: is this a finished tamis run?")
        sets = self.attribute_sets()
        return pa.concat_tables([self.read_chunk(c, columns, sets) for c in chunks], promote_options="default")

    def save_targets(self, targets: dict | None) -> None:
        self.write_json(TARGETS, targets or {})

    def read_targets(self) -> dict | None:
        """The targets the run was scored with, or None for a run made before they were kept."""
        return self.read_json(TARGETS)

    # -- checks before writing --

    def ensure_writable(self) -> None:
        """Create OUT (and its parents) or refuse with one line: a file, a symlinked entry, read-only."""
        if self.remote:
            if _fs(self.path).exists(self.path):  # an object named exactly OUT
                raise RunFolderError(f"--out {self.path} is a file, not a folder")
            return
        p = self.path
        if os.path.lexists(p) and not os.path.isdir(p):
            raise RunFolderError(f"--out {p} is a file, not a folder")
        for name in (*RUN_ENTRIES, LOCK):
            entry = self.join(name)
            if os.path.islink(entry):
                raise RunFolderError(f"{entry} is a symlink: tamis writes and deletes only inside the run folder; "
                                     "remove the link or choose another --out")
        try:
            os.makedirs(p, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise RunFolderError(f"--out {p} is not a folder: a file is in its path") from None
        except OSError as e:
            raise storage_error("write to", p, e) from None
        if not os.access(p, os.W_OK):
            read_only = os.statvfs(p).f_flag & os.ST_RDONLY
            raise RunFolderError(f"read-only file system: {p} (choose a writable folder)" if read_only
                                 else f"permission denied: cannot write to {p}")

    def _ensure_dirs(self) -> None:
        if self.remote:
            return  # object stores have no folders
        for sub in (SHARDS, REJECTS, WORK):
            try:
                os.makedirs(self.join(sub), exist_ok=True)
            except OSError as e:
                raise storage_error("write to", self.join(sub), e) from None

    # -- deleting (only the run's own entries) --

    def _delete_entry(self, name: str) -> None:
        if name not in RUN_ENTRIES:
            raise ValueError(f"{name!r} is not part of a run's layout")
        path = self.join(name)
        if self.remote:
            files = match(glob_escape(path) + "/**") if name in (SHARDS, ATTRIBUTES, REJECTS, WORK) else []
            if _fs(path).exists(path):
                files.append(path)
            if files:
                delete_files(files)
            return
        if os.path.islink(path):
            raise RunFolderError(f"{path} is a symlink: refusing to delete through it")
        import shutil

        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        except OSError as e:
            raise storage_error("write to", path, e) from None

    def delete_attribute_set(self, name: str) -> None:
        """Delete one attribute set (a task being replaced), nothing else."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not an attribute set's name")
        files = self.attribute_files(name) + self._list(f"{ATTRIBUTES}/{name}", "", TEMP_SUFFIX)
        if files:
            delete_files(files)
        if not self.remote:
            with contextlib.suppress(OSError):
                os.rmdir(self.join(ATTRIBUTES, name))

    def clear(self) -> None:
        """Empty the run (``--overwrite``): the layout's entries only, never the user's other files."""
        for name in RUN_ENTRIES:
            self._delete_entry(name)

    def remove_temp_files(self) -> None:
        """Half-written files of a killed writer: never mistaken for finished ones."""
        subs = (SHARDS, REJECTS, WORK, *(f"{ATTRIBUTES}/{n}" for n in self.attribute_sets()))
        stale = [p for sub in subs for p in self._list(sub, "", TEMP_SUFFIX)]
        if stale:
            delete_files(stale)

    def delete_work_file(self, name: str) -> None:
        path = self.join(WORK, name)
        if exists(path):
            delete_files([path])

    # -- the plan: what a resume may reuse --

    def prepare(self, plan: dict, overwrite: bool) -> set[str]:
        """Start or resume a run under ``plan`` (its ``scoring_key``); returns chunks already scored.

        A plan with another key is refused (its shards were scored from other inputs), and so are
        shards with no plan at all; ``overwrite`` empties the run first instead.
        """
        old = self.read_json(PLAN)
        if overwrite:
            self.clear()
        elif old is not None and old.get("scoring_key") != plan["scoring_key"]:
            raise RunFolderError(f"{self.path} holds a run {plan_difference(old, plan)}; pass --overwrite to score "
                                 "again (it replaces that run), or choose another --out")
        elif old is None and (self.shards() or self.rejects() or self.exists(MANIFEST)):
            raise RunFolderError(f"{self.path} holds a run tamis did not plan here (shards or a manifest, no "
                                 f"{PLAN}); pass --overwrite to replace it, or choose another --out")
        self._ensure_dirs()
        self.remove_temp_files()
        self.write_json(PLAN, plan)
        return self.scored_chunks()

    # -- the state record --

    def state(self) -> dict | None:
        return self.read_json(STATE)

    def set_state(self, phase: str, **info: Any) -> None:
        """Record the run's phase (scoring, selecting, finished), atomically."""
        self.write_json(STATE, {"phase": phase, "updated": _now(), **info})

    def unfinished(self) -> str | None:
        """None for a finished run, else what is missing, as the words after "unfinished: "."""
        state = self.state()
        has_manifest = self.exists(MANIFEST)
        if state is None:
            if has_manifest:
                return None  # made before the state record: the manifest was written last
            n = len(self.shards())
            if n:
                return f"{n} chunks scored and no manifest (killed, or still running)"
            raise RunFolderError(f"{self.path} is not a tamis run (no {MANIFEST}, no shards)")
        phase = state.get("phase")
        if phase == FINISHED and has_manifest:
            return None
        if phase == SCORING:
            planned = state.get("chunks")
            done = len(self.scored_chunks())
            return f"{done} of {planned} chunks scored" if planned is not None else f"{done} chunks scored"
        if phase == SELECTING:
            return "selection interrupted" + (f" (in {state.get('by')})" if state.get("by") in ("reselect", "add-task") else "")
        if phase == ADDING:
            return f"task(s) {', '.join(state.get('tasks') or [])} being added"
        return f"no {MANIFEST}"

    def finish_hint(self) -> str:
        """How to finish this unfinished run: the command that was interrupted, run again."""
        if (self.state() or {}).get("by") == "add-task":
            return "rerun the same `tamis add-task` to finish it"
        return FINISH_HINT

    def running_holder(self) -> str | None:
        """The writer named in the lock file, where it still seems alive (for a reader's message)."""
        owner = _parse_owner(read_bytes(self.join(LOCK), missing_ok=True))
        ourselves = owner and owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()
        if owner and not ourselves and _owner_alive(owner, stale_s=RunLock.STALE_S):
            return describe_owner(owner)
        return None

    def require_exists(self) -> None:
        """A reader's first check: there is a run here at all (never creates anything)."""
        if self.remote:
            if not (self.exists(MANIFEST) or self.exists(STATE)):
                raise RunFolderError(f"{self.path}: no tamis run there (no {MANIFEST})")
        elif not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path}: no such run folder")

    def require_finished(self, action: str = "read") -> dict:
        """The manifest of a finished run, or one line saying what is missing."""
        self.require_exists()
        missing = self.unfinished()
        if missing is not None:
            holder = self.running_holder()
            running = f" (a run by {holder} may still be writing it)" if holder else ""
            raise UnfinishedRunError(f"cannot {action} {self.path}: unfinished: {missing}{running}; {self.finish_hint()}")
        manifest = self.read_manifest()
        if manifest is None:
            raise RunFolderError(f"{self.join(MANIFEST)} not found: is this a finished tamis run?")
        return manifest

    def require_reselectable(self) -> dict:
        """A finished run, or one whose last reselect was interrupted (reselect redoes pass 2 whole)."""
        state = self.state()
        if state and state.get("phase") == SELECTING and state.get("by") in ("reselect", "add-task") and self.exists(MANIFEST):
            return self.read_manifest()
        return self.require_finished("reselect")

    # -- the lock --

    def lock(self) -> RunLock:
        return RunLock(self)


def plan_difference(old: dict, new: dict) -> str:
    """Why a stored plan does not match this run, in words."""
    if "files" not in old:
        return "made with another config or pool (or by an older tamis)"
    old_files = {f["path"]: f for f in old["files"]}
    for f in new["files"]:
        o = old_files.get(f["path"])
        if o and (o["bytes"], o["sha256"]) != (f["bytes"], f["sha256"]):
            size = f" ({o['bytes']} -> {f['bytes']} bytes)" if o["bytes"] != f["bytes"] else " (same size, new content)"
            return f"scored before {f['path']} changed{size}"
    if [f["path"] for f in old["files"]] != [f["path"] for f in new["files"]]:
        return "scored from other pool files"
    old_t, new_t = old.get("targets") or {}, new.get("targets") or {}
    if old_t != new_t:
        changed = sorted(t for t in set(old_t) | set(new_t) if old_t.get(t) != new_t.get(t))
        return f"scored with other target examples (task {', '.join(map(repr, changed))} changed)"
    return "made with another scoring config"


# -- one writer at a time ------------------------------------------------------------------------

def _parse_owner(data: bytes | None) -> dict | None:
    if not data or not data.strip():
        return None
    try:
        owner = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"host": "?", "pid": "?", "started": "?"}  # a damaged lock file still names "someone"
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict) -> str:
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {owner.get('started', '?')}"


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists under another user, or not a pid we can judge: assume alive
    return True


def _owner_alive(owner: dict, stale_s: float) -> bool:
    """A recorded writer still running: same host, its pid alive; another host, a fresh heartbeat."""
    if owner.get("host") == socket.gethostname():
        return pid_alive(owner.get("pid"))
    beat = owner.get("heartbeat")
    return isinstance(beat, (int, float)) and time.time() - beat < stale_s


class RunLock:
    """The run folder's single-writer lock: ``with folder.lock(): ...``.

    Local folders: ``fcntl.flock`` on ``OUT/.tamis.lock``, held for the whole run, with the
    holder (host, pid, start time) written in the file. The kernel drops the lock when its
    process dies, however it dies, so a lock left by a dead process is simply taken over (the
    leftover holder line is logged). flock is per host: two machines sharing an NFS folder are
    only kept apart where the NFS mount forwards flock to the server.

    Object stores (``gs://``, ``s3://``) have no flock, and Beam exposes no create-if-absent
    write, so tamis follows a best-effort rule there: read ``OUT/.tamis.lock``; if it names
    another writer that is alive (same host: its pid runs; another host: its heartbeat is under
    ``STALE_S`` old), refuse. Otherwise write our own (host, pid, start, random token,
    heartbeat), wait ``SETTLE_S``, read it back and refuse unless it still holds our token
    (two writers that both wrote: the later write wins, the other refuses). The holder rewrites
    its heartbeat every ``STALE_S / 4`` and deletes the object when it ends; a holder that died
    leaves an object that goes stale after ``STALE_S``. Two writers can still both pass if one
    reads before and writes more than ``SETTLE_S`` after the other: run one writer per folder.
    """

    STALE_S = 120.0
    SETTLE_S = 1.0

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.path = folder.join(LOCK)
        self.took_over: dict | None = None  # the holder line a dead writer left behind
        self._fd: int | None = None
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}

    def _refuse(self, holder: dict | None) -> RunLockedError:
        who = describe_owner(holder) if holder else "a writer that did not say who it is"
        return RunLockedError(f"{self.folder.path} is in use by another tamis run ({who}); "
                              "wait for it to end, or choose another --out")

    def acquire(self) -> RunLock:
        self.folder.ensure_writable()
        if not self.folder.object_lock:
            try:
                self._acquire_flock()
                return self
            except _NoFlock:
                pass
        self._acquire_object()
        return self

    def _acquire_flock(self) -> None:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise storage_error("write to", self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_owner(os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._refuse(holder) from None
        except OSError as e:  # a filesystem without flock (some FUSE and NFS mounts)
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise _NoFlock() from None
            raise storage_error("write to", self.path, e) from None
        previous = _parse_owner(os.pread(fd, 4096, 0))
        if previous:
            self.took_over = previous
            log.warning("tamis: took over the lock of %s, left by a run that ended without releasing it (%s)",
                        self.folder.path, describe_owner(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._owner()).encode(), 0)
        self._fd = fd

    def _acquire_object(self) -> None:
        current = _parse_owner(read_bytes(self.path, missing_ok=True))
        if current and _owner_alive(current, self.STALE_S):
            raise self._refuse(current)
        if current:
            self.took_over = current
        self._token = uuid.uuid4().hex
        self._write_object()
        time.sleep(self.SETTLE_S)
        now = _parse_owner(read_bytes(self.path, missing_ok=True))
        if not now or now.get("token") != self._token:
            self._token = None
            raise self._refuse(now)
        self._thread = threading.Thread(target=self._heartbeat, name="tamis-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write_object(self) -> None:
        write_json(self.path, {**self._owner(), "token": self._token, "heartbeat": time.time()})

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.STALE_S / 4):
            now = _parse_owner(read_bytes(self.path, missing_ok=True))
            if not now or now.get("token") != self._token:
                log.error("tamis: the lock of %s was taken by %s while this run held it", self.folder.path,
                          describe_owner(now) if now else "nobody")
                return
            self._write_object()

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nothing to take over
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._token is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
            now = _parse_owner(read_bytes(self.path, missing_ok=True))
            if now and now.get("token") == self._token:
                delete_files([self.path])
            self._token = None


class _NoFlock(Exception):
    """flock is not supported on this filesystem: use the lock-object rule."""
