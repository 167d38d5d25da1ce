"""Run the smoke suite against a built wheel in clean venvs at the edges of the declared ranges.

    python tests/smoke/environments.py newest lowest     # both environments (the default)
    python tests/smoke/environments.py --alongside python -m pytest -q   # .ci/run: beside the pinned suite
    python tests/smoke/environments.py --refresh-constraints   # new pins: the newest allowed releases

``newest`` resolves ``pyproject.toml``'s dependencies to the newest releases they allow, as a
plain ``pip install tamis`` does today; ``lowest`` to the lowest each lower bound allows (uv's
``--resolution lowest-direct``: the bounds themselves, their dependencies as new as they come).
Each environment gets the wheel built from this checkout (``pip wheel``), installed into a venv
in a temporary folder away from the source tree, and runs ``tests/smoke/test_installed.py``
from there. torch is the CPU build pinned in ``deploy/constraints.txt`` in every environment:
any other torch from the index is a multi-GB CUDA build.

``--alongside CMD...`` runs CMD (the pinned suite) at the same time, with the terminal to itself;
this script's own output waits until CMD ends. Most of the pinned suite's cluster rehearsal keeps
one core busy, so the smoke suites use the other. The exit status is non-zero if either failed.

``--refresh-constraints`` rewrites ``deploy/constraints.txt`` (and the Beam tags of the deploy
kits) to the newest allowed releases, then runs the ``newest`` smoke suite; run the whole suite
after it before committing the new pins (README, "Development").
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
SMOKE = Path(__file__).resolve().parent / "test_installed.py"
RESOLUTIONS = {"newest": "highest", "lowest": "lowest-direct"}
# The demo (RDS+ with MiniLM over 2,000 rows) runs in the newest environment only: in the lowest,
# the 240-row select runs the same code (rds and every other selector), and CI's 25 minutes on
# 2 cores do not hold both environments' demos beside the pinned suite.
DESELECT = {"lowest": "not demo"}
SHOWN = ("apache-beam", "torch", "transformers", "tokenizers", "peft", "numpy", "pyarrow", "protobuf", "datasets",
         "pydantic", "typer", "rich", "faiss-cpu", "safetensors", "matplotlib", "pyyaml", "sentence-transformers")
# Files that name the pinned Beam release in an image tag: the refresh moves them with the pin.
BEAM_TAGGED = [ROOT / "deploy" / "dataflow" / "Dockerfile", ROOT / "deploy" / "dataflow" / "README.md",
               ROOT / "deploy" / "flink" / "docker-compose.yml", ROOT / "deploy" / "flink" / "README.md"]


OUT = sys.stdout  # a log file while another command has the terminal (--alongside)


def say(text: str) -> None:
    print(text, file=OUT, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    say("+ " + " ".join(map(str, cmd)))
    if OUT is not sys.stdout:
        kw = {"stdout": OUT, "stderr": subprocess.STDOUT, **kw}
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        sys.exit("environments.py: uv is not installed (pip install uv; the [test] extra has it)")
    return found


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, pinned = line.partition("==")
            out[name.strip().lower()] = pinned.strip()
    return out


def build_wheel(work: Path) -> Path:
    """The wheel a release would publish, built from this checkout as ``pip wheel .`` builds it."""
    dist = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT])
    (wheel,) = dist.glob("tamis-*.whl")
    return wheel


def torch_wheel(work: Path) -> Path:
    """The pinned torch as a file (pip finds the CPU build this kind of machine keeps on disk)."""
    folder = work / "torch"
    run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", folder, f"torch=={pins()['torch']}"])
    (wheel,) = folder.glob("torch-*.whl")
    return wheel


def resolve(work: Path, resolution: str, extras: tuple[str, ...] = ()) -> Path:
    """Exact versions for ``pyproject.toml``'s dependencies (and pytest) at one edge of the ranges."""
    torch_pin = work / "torch-pin.txt"
    torch_pin.write_text(f"torch=={pins()['torch']}\n")
    requirements = work / f"requirements-{resolution}.in"
    requirements.write_text("pytest>=8\n")  # the [test] extra's bound: the smoke suite needs pytest alone
    lock = work / f"{resolution}.txt"
    extra = [a for e in extras for a in ("--extra", e)]
    run([uv(), "pip", "compile", "-q", ROOT / "pyproject.toml", requirements, *extra, "--resolution", resolution,
         "--python", sys.executable, "-c", torch_pin, "--no-header", "--no-annotate", "-o", lock])
    return lock


def make_env(work: Path, name: str, wheel: Path, torch: Path, lock: Path) -> Path:
    venv = work / name / "venv"
    run([uv(), "venv", "-q", "--python", sys.executable, venv])
    python = venv / "bin" / "python"
    run([uv(), "pip", "install", "-q", "--python", python, "-c", lock, torch, wheel, "pytest"])
    return python


def versions(python: Path) -> str:
    code = ("import importlib.metadata as m\n"
            f"for n in {SHOWN!r}:\n"
            "    try: print(f'  {n} {m.version(n)}')\n"
            "    except m.PackageNotFoundError: pass\n")
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout


def start_smoke(work: Path, name: str, python: Path) -> tuple[subprocess.Popen, Path]:
    """The smoke suite, copied away from the checkout, so ``import tamis`` can only find the wheel.
    Started in the background (its output goes to a log): the environments run side by side."""
    folder = work / name / "smoke"
    folder.mkdir(parents=True)
    shutil.copy(SMOKE, folder / SMOKE.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TAMIS_SMOKE_INSTALLED="1", PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
    log = work / name / "smoke.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                                 "--durations=6", "-k", DESELECT.get(name, ""), folder.name], cwd=folder.parent,
                                env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, log


def refresh_constraints(work: Path) -> None:
    """Rewrite the pins to the newest allowed releases; move the deploy kits' Beam tags with them."""
    lock = resolve(work, "highest", extras=("bench",))
    newest = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            newest[m.group(1).lower()] = m.group(2)
    old = pins()
    lines = []
    for line in CONSTRAINTS.read_text().splitlines():
        name = line.partition("==")[0].strip().lower()
        if line.strip() and not line.lstrip().startswith("#") and name in newest and name != "torch":
            line = f"{line.partition('==')[0]}=={newest[name]}"
        lines.append(line)
    CONSTRAINTS.write_text("\n".join(lines) + "\n")
    before, after = old["apache-beam"], newest["apache-beam"]
    if before != after:
        for path in BEAM_TAGGED:
            path.write_text(path.read_text().replace(before, after))
    changed = {n: (old[n], v) for n, v in pins().items() if old.get(n) != v}
    say("constraints: " + (", ".join(f"{n} {a} -> {b}" for n, (a, b) in changed.items()) or "already the newest"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("envs", nargs="*", metavar="ENV", help="newest, lowest or both (default: both)")
    parser.add_argument("--refresh-constraints", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (venvs, locks)")
    parser.add_argument("--alongside", nargs=argparse.REMAINDER, default=[], metavar="CMD",
                        help="a command to run at the same time (the pinned suite); must come last")
    args = parser.parse_args(argv)
    unknown = [e for e in args.envs if e not in RESOLUTIONS]
    if unknown:
        parser.error(f"unknown environment {unknown[0]!r}: choose from {', '.join(RESOLUTIONS)}")
    envs = list(args.envs) or (["newest"] if args.refresh_constraints else ["newest", "lowest"])
    global OUT
    work = Path(tempfile.mkdtemp(prefix="tamis-envs-"))
    failed, running = [], {}
    beside = subprocess.Popen(args.alongside) if args.alongside else None
    if beside is not None:
        OUT = open(work / "environments.log", "w", encoding="utf-8")
    try:
        if args.refresh_constraints:
            refresh_constraints(work)
        wheel, torch = build_wheel(work), torch_wheel(work)
        start = time.perf_counter()
        for name in envs:
            python = make_env(work, name, wheel, torch, resolve(work, RESOLUTIONS[name]))
            say(f"== {name}: the {name} releases the ranges allow, with {wheel.name}:\n{versions(python)}")
            running[name] = start_smoke(work, name, python)
        for name, (proc, log) in running.items():
            code = proc.wait()
            say(f"== smoke suite, {name} releases:\n{log.read_text()}")
            say(f"== {name}: {'passed' if code == 0 else f'FAILED (exit {code})'} "
                f"({time.perf_counter() - start:.0f} s since the first install)")
            if code:
                failed.append(name)
    except subprocess.CalledProcessError as e:
        say(f"environments.py: {' '.join(map(str, e.cmd[:4]))} ... failed with exit status {e.returncode}")
        failed.append("setup")
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.kill()
        if beside is not None:
            if beside.wait():
                failed.append(" ".join(args.alongside))
            OUT.close()
            OUT = sys.stdout
            print((work / "environments.log").read_text(), flush=True)
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
