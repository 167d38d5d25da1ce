"""The installed dependencies against the ranges tamis declares, checked before any work starts.

pip leaves a user outside those ranges more easily than it seems: a later install of another
package, a ``--no-deps`` install, an image built from another lock. The first sign would then be
a traceback from deep inside Beam or transformers, minutes into a run. Each range is tested at
both ends (README, "Development"), so anything outside one is refused in one line that names
the package, its version and the range, and how to install a supported one.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from importlib import metadata

from .errors import ConfigError


class DependencyError(ConfigError):
    """An installed dependency is outside the range tamis supports (or missing)."""


@lru_cache(maxsize=1)
def unsupported() -> tuple[str, ...]:
    """One line per declared dependency that is missing or outside its range; empty when all fit.

    Empty too when tamis itself is not installed (a source tree on ``sys.path``): then there is no
    declared range to check against.
    """
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("tamis") or []
    except metadata.PackageNotFoundError:
        return ()
    problems = []
    for line in declared:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra's requirement
        bounds = sorted(req.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))  # lower first
        wanted = req.name + ",".join(map(str, bounds))
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed; tamis needs {wanted}: pip install '{wanted}'")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed, but tamis supports {wanted}: pip install '{wanted}'")
    return tuple(problems)


def require_supported() -> None:
    """Raise :class:`DependencyError` naming every dependency outside its range."""
    problems = unsupported()
    if problems:
        raise DependencyError("; ".join(problems))


def exit_if_unsupported() -> None:
    """The command line's check: one plain line on stderr and status 2. It runs before typer or
    rich are imported, since either may be the package that is out of range."""
    problems = unsupported()
    if problems:
        print(f"tamis: {'; '.join(problems)}", file=sys.stderr)
        sys.exit(DependencyError.exit_code)
