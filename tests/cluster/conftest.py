"""A cluster on one machine: an S3 API, Beam's job server and a worker pool that shares no disk with us.

Every service is a separate process on a free loopback port, started here and stopped by its PID
(its process group) when the session ends:

- an S3 API (``moto``'s server): the pool, the targets, the models and the output live there;
- Beam's job server (``local_job_service_main``), as a Flink or Dataflow job service would run;
- a worker pool booted by ``tamis.pipeline.worker_boot`` (as the SDK container boots its workers),
  inside a private mount namespace where tmpfs hides this process's ``/tmp``, ``$TAMIS_CACHE``
  and ``~/.cache``: whatever the launcher wrote to its own disk, the workers cannot see.

The namespace needs root (``unshare --mount``); elsewhere the rehearsal is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tamis-rehearsal"
KEY, SECRET, REGION = "rehearsal-key", "rehearsal-secret", "us-east-1"
WORKERS = 2  # worker processes the job server asks the pool for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before listening on {port}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a service and its children: each runs in its own process group, led by its PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # the pool's workers share its group and may outlive it by a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """Linux: the service gets SIGKILL when the test process dies, even when pytest itself is
    killed and its fixtures never run their teardown (no service outlives the tests)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd="/",
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def namespace_problem() -> str | None:
    """Why a private mount namespace cannot be made here, or None."""
    if sys.platform != "linux":
        return "needs Linux mount namespaces"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /tmp && test -z \"$(ls -A /tmp)\""], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"needs root for unshare --mount (tried: {probe.stderr.strip() or probe.returncode})"
    return None


def service_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TMPDIR", None)  # a test's own TMPDIR lies under /tmp, which the workers do not see
    return env


@dataclass
class S3:
    """An S3 API on loopback, with one bucket."""

    endpoint: str

    @property
    def args(self) -> list[str]:
        """The Beam options that reach it (what a user passes for a MinIO or Ceph endpoint)."""
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={KEY}",
                f"--s3_secret_access_key={SECRET}", f"--s3_region_name={REGION}"]

    @property
    def options(self) -> dict:
        return {"s3_endpoint_url": self.endpoint, "s3_access_key_id": KEY, "s3_secret_access_key": SECRET,
                "s3_region_name": REGION}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def upload(self, local: str | Path, prefix: str) -> str:
        """A file or folder copied to ``s3://BUCKET/prefix``; returns its URI."""
        local, client = Path(local), self.client()
        if local.is_dir():
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local).as_posix()}")
        else:
            client.upload_file(str(local), BUCKET, prefix)
        return f"s3://{BUCKET}/{prefix}"

    def download(self, prefix: str, dest: Path) -> Path:
        """Everything under ``s3://BUCKET/prefix`` copied to ``dest`` (read back without tamis)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                target = dest / obj["Key"][len(prefix.rstrip("/")) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, obj["Key"], str(target))
        return dest


@dataclass
class Cluster:
    s3: S3
    job_endpoint: str
    pool_endpoint: str
    logs: Path
    pool_pid: int

    @property
    def beam_args(self) -> list[str]:
        """What a user passes to submit to this cluster, as for Flink's job server and worker pool."""
        return ["--runner", "PortableRunner", f"--job_endpoint={self.job_endpoint}",
                "--environment_type=EXTERNAL", f"--environment_config={self.pool_endpoint}",
                f"--direct_num_workers={WORKERS}", *self.s3.args]

    def worker_log(self, since: int = 0) -> str:
        """The worker pool's log (its workers' stderr), from byte ``since`` on."""
        with open(self.logs / "worker_pool.log", "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def sdk_workers(self) -> list[int]:
        """PIDs of the SDK harness processes the pool's workers run now (read from /proc)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" (", 1)
                children.setdefault(int(rest.rsplit(") ", 1)[1].split()[1]), []).append(int(pid))
            except (OSError, IndexError, ValueError):
                continue
        found, todo = [], [self.pool_pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                try:
                    if b"sdk_worker_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(child)
                except OSError:
                    continue
                todo.append(child)
        return found

    def worker_log_size(self) -> int:
        return (self.logs / "worker_pool.log").stat().st_size


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    pytest.importorskip("moto", reason="the S3 API on loopback needs moto[server] (the test extra)")
    pytest.importorskip("boto3", reason="the S3 API on loopback needs boto3 (the test extra)")
    logs = tmp_path_factory.mktemp("s3_logs")
    port = free_port()
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], logs / "s3.log", service_env())
    try:
        wait_for_port(port, proc, logs / "s3.log")
        server = S3(f"http://127.0.0.1:{port}")
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, s3):
    problem = namespace_problem()
    if problem:
        pytest.skip(f"cluster rehearsal: {problem}")
    logs = tmp_path_factory.mktemp("cluster_logs")
    env = service_env()
    job_port, pool_port = free_port(), free_port()
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["job_server"] = start([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                     "--port", str(job_port)], logs / "job_server.log", env)
        hidden: list[str] = []
        for p in ("/tmp", os.environ.get("TAMIS_CACHE"), str(Path.home() / ".cache")):
            if p and Path(p).is_dir() and not any(Path(p).is_relative_to(h) for h in hidden):
                hidden.append(str(Path(p).resolve()))
        # The interpreter, the venv and this checkout stay visible even where they lie under a
        # hidden folder (a CI checkout in /tmp): bound aside on a private tmpfs, then back.
        code = [str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix, Path(__file__).resolve().parents[2])]
        keep = sorted({c for c in code if any(Path(c).is_relative_to(h) for h in hidden)})
        steps = ["mount -t tmpfs tmpfs /mnt"] if keep else []
        steps += [f"mkdir -p /mnt/k{i} && mount --bind {shlex_quote(c)} /mnt/k{i}" for i, c in enumerate(keep)]
        steps += [f"mount -t tmpfs tmpfs {shlex_quote(p)}" for p in hidden]
        steps += [f"mkdir -p {shlex_quote(c)} && mount --bind /mnt/k{i} {shlex_quote(c)}" for i, c in enumerate(keep)]
        mounts = " && ".join(steps)
        boot = f"exec {shlex_quote(sys.executable)} -m tamis.pipeline.worker_boot --pool --service_port={pool_port}"
        procs["worker_pool"] = start(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && {boot}"],
                                     logs / "worker_pool.log", dict(env, TMPDIR="/tmp"))
        wait_for_port(job_port, procs["job_server"], logs / "job_server.log")
        wait_for_port(pool_port, procs["worker_pool"], logs / "worker_pool.log")
        yield Cluster(s3, f"localhost:{job_port}", f"localhost:{pool_port}", logs, procs["worker_pool"].pid)
    finally:
        for proc in reversed(list(procs.values())):
            stop(proc)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
