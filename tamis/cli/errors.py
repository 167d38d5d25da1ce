"""The one place that decides whether a failure is the user's to fix, and says it in one line.

A user-caused failure is: a :class:`tamis.errors.TamisError`; a config that pydantic refused;
an operating-system refusal about a path (disk full, read-only, no permission, no such file);
a cloud client's refusal (no credentials, no such bucket); a Beam filesystem error about a
path. Beam wraps a worker's exception (``RuntimeError: OSError: ... [while running 'X']``) and
may hold the real one in ``__cause__``/``__context__`` or in a ``BeamIOError``'s per-path
details, so the whole chain is searched. Anything else is a bug in tamis and keeps its
traceback.
"""
from __future__ import annotations

import errno
import linecache
import os
import re
from collections.abc import Iterator
from pathlib import Path

INTERRUPTED = "interrupted; rerun the same command to resume (finished work is kept)"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_USER = 2
EXIT_LOST = 75  # EX_TEMPFAIL: nothing to fix, rerun to resume
# gRPC states in which a portable runner (a job server, a worker pool) stops answering mid-run.
_LOST_JOB_CODES = ("DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED")

_BEAM_STEP = re.compile(r" \[while running '[^']*'\]")
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")

# errno -> what to say first, and what to do about it.
_OS_ADVICE = {
    errno.ENOSPC: ("disk full", "free some space and rerun the same command: finished work is kept"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and rerun the same command: finished work is kept"),
    errno.EFBIG: ("file too large for this filesystem or limit", "choose another --out"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", None),
    errno.EPERM: ("operation not permitted", None),
    errno.ENOENT: ("no such file or folder", None),
    errno.ENOTDIR: ("not a folder", None),
    errno.EISDIR: ("is a folder, not a file", None),
    errno.EEXIST: ("already exists", None),
    errno.ENAMETOOLONG: ("name too long", None),
    errno.ENOTEMPTY: ("folder not empty", None),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer --workers"),
    errno.ENOMEM: ("out of memory", "use fewer --workers or a smaller --batch-tokens"),
}
# Modules whose exceptions are a cloud service or its client refusing (credentials, buckets).
_CLOUD_MODULES = ("botocore.", "boto3.", "google.auth.", "google.api_core.", "google.cloud.", "azure.core.")
# Built-in exceptions tamis code raises on purpose for user errors, until every such raise is a
# TamisError: they count as the user's only when a `raise` statement in tamis itself made them.
_LEGACY = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
_TAMIS_DIR = str(Path(__file__).resolve().parents[1])


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then every exception it wraps (causes, contexts, Beam's per-path
    details, exception groups), outermost first, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        details = getattr(e, "exception_details", None)  # Beam's BeamIOError: {path: exception}
        if isinstance(details, dict):
            todo.extend(v for v in details.values() if isinstance(v, BaseException))
        todo.extend(getattr(e, "exceptions", None) or [])  # ExceptionGroup
        todo.append(e.__cause__)
        if not e.__suppress_context__:
            todo.append(e.__context__)


def interrupted(exc: BaseException) -> bool:
    """True when Ctrl-C (SIGINT) is what stopped the run, however Beam wrapped it."""
    return any(isinstance(e, KeyboardInterrupt) for e in chain(exc))


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """``(one line, exit status)`` when the user can fix ``exc``; None for a bug in tamis."""
    from pydantic import ValidationError

    from ..errors import TamisError
    from ..schemas.config import config_error_line

    found = list(chain(exc))
    for e in found:  # a message tamis wrote for the user wins over the raw cause below it
        if isinstance(e, TamisError):
            return _clean(str(e)), e.exit_code
        if isinstance(e, ValidationError):
            return _clean(config_error_line(e)), EXIT_USER
    for e in reversed(found):  # then the deepest refusal from the system or a cloud client
        line = _os_line(e) or _cloud_line(e)
        if line:
            return _clean(line), EXIT_USER
    for e in found:  # the runner lost its job or its workers (a worker killed, a job server gone)
        line = _lost_job_line(e)
        if line:
            return _clean(line), EXIT_LOST
    for e in found:  # a worker process's failure arrives as the text of its traceback
        line = _remote_line(e)
        if line:
            return _clean(line), EXIT_USER
    for e in found:
        if _is_beam_io_error(e):
            return _clean(_beam_io_line(e, found)), EXIT_USER
    for e in found:
        if isinstance(e, _LEGACY) and _raised_by_tamis(e):
            return _clean(str(e.args[0]) if len(e.args) == 1 else str(e)), EXIT_USER
    return None


def _clean(line: str) -> str:
    """One line, without Beam's step annotation."""
    line = _BEAM_STEP.sub("", line)
    return " ".join(line.split())


def _lost_job_line(e: BaseException) -> str | None:
    """A gRPC failure between tamis and the runner: the job or a worker is gone. Finished shards
    stay, so the rerun resumes; the line says which state and what to do."""
    if not type(e).__module__.startswith("grpc"):
        return None
    code = getattr(e, "code", None)
    name = getattr(code(), "name", "") if callable(code) else ""
    if name not in _LOST_JOB_CODES:
        return None
    return (f"the runner stopped answering ({name}): a worker or the job server was lost; "
            "rerun the same command to resume (finished shards are kept)")


def _os_line(e: BaseException) -> str | None:
    if not isinstance(e, OSError):
        return None
    code = e.errno
    if code is None:  # pyarrow and Beam put the errno in the text only
        m = _ERRNO_IN_TEXT.search(str(e))
        code = int(m.group(1)) if m else None
    if code not in _OS_ADVICE:
        return None
    what, advice = _OS_ADVICE[code]
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = f": {' -> '.join(os.fsdecode(p) or repr('') for p in paths)}" if paths else f": {os.strerror(code)}"
    return f"{what}{where}" + (f" ({advice})" if advice else "")


_REMOTE_LAST_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.MULTILINE)


def _remote_line(e: BaseException) -> str | None:
    """A failure from a Beam worker process reaches the driver as a RuntimeError holding the
    worker's traceback as text: find the user-caused exception named in it."""
    if not isinstance(e, RuntimeError):
        return None
    from .. import errors

    tamis_errors = {name for name, cls in vars(errors).items()
                    if isinstance(cls, type) and issubclass(cls, errors.TamisError)}
    for name, message in _REMOTE_LAST_LINE.findall(str(e)):
        short = name.rsplit(".", 1)[-1]
        if short in tamis_errors:
            return message
        if short in ("OSError", "IOError", "PermissionError", "FileNotFoundError", "IsADirectoryError",
                     "NotADirectoryError", "FileExistsError"):
            m = _ERRNO_IN_TEXT.search(message)
            if m and int(m.group(1)) in _OS_ADVICE:
                return _os_line(OSError(int(m.group(1)), os.strerror(int(m.group(1)))))
    return None


def _cloud_line(e: BaseException) -> str | None:
    module = type(e).__module__ + "."
    if not module.startswith(_CLOUD_MODULES):
        return None
    return f"{type(e).__name__}: {e}"


def _is_beam_io_error(e: BaseException) -> bool:
    return type(e).__name__ == "BeamIOError" and type(e).__module__.startswith("apache_beam.")


def _beam_io_line(e: BaseException, found: list[BaseException]) -> str:
    """A Beam filesystem refusal: the path(s) and the deepest reason it gives."""
    details = getattr(e, "exception_details", None) or {}
    paths = [str(p) for p in details if not isinstance(p, tuple)] or [str(p) for p in details]
    root = found[-1]
    reason = str(root) if root is not e else str(e).split(" with exceptions", 1)[0]
    if "Must provide one of client or options" in reason or "AWS dependencies are not installed" in reason:
        reason = "no S3 client could be made (install apache-beam[aws] and set AWS credentials)"
    where = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"cannot access {where}: {reason}" if where else f"storage refused: {reason}"


def _raised_by_tamis(e: BaseException) -> bool:
    """True when a ``raise`` statement in tamis' own code made ``e`` (not a library, not a
    failed lookup or call in tamis)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not os.path.abspath(filename).startswith(_TAMIS_DIR + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")
