"""One exception hierarchy for failures a user causes and can fix.

Everything raised from here is printed by the CLI as one line (``tamis: <message>``) with a
non-zero exit status, and a traceback only with ``--debug``. Anything else that escapes is a
bug in tamis and keeps its traceback. Each class also derives from the built-in exception a
Python caller would expect, so ``except ValueError`` keeps working for API users.
"""
from __future__ import annotations


class TamisError(Exception):
    """A failure the user can fix; ``str(err)`` is the one line shown."""

    exit_code = 2

    def __str__(self) -> str:  # the message itself, never KeyError's quoted repr
        return Exception.__str__(self)


class ConfigError(TamisError, ValueError):
    """A bad flag, config key, parameter value or type, device or budget."""


class InputError(TamisError, ValueError):
    """A pool or target file that cannot be read as a whole (missing, wrong type, no examples)."""


class RunFolderError(TamisError, OSError):
    """The output folder cannot be used: not a folder, read-only, holds another run, full disk."""


class RunLockedError(RunFolderError):
    """Another process is writing into this run folder."""

    exit_code = 3


class UnfinishedRunError(RunFolderError):
    """A reader was given a run that was killed or is still running."""


class StorageError(TamisError, OSError):
    """A filesystem or object store refused: no credentials, no such bucket, disk full."""
