"""Boot a Beam SDK worker the way Beam's SDK container does, for bare (EXTERNAL) worker pools.

Beam's worker pool (``python -m apache_beam.runners.worker.worker_pool_main``) on its own starts
each worker with only the control address, so the worker never learns the pipeline's options:
``--s3_endpoint_url`` and the credentials are missing, and its first ``s3://`` read fails. In the
SDK container the boot program fills that gap: it asks the runner's provision service for the
worker's pipeline options and endpoints, fetches the staged artifacts, and starts the harness
with them in its environment. This module is that boot program, in Python:

    python -m apache_beam.runners.worker.worker_pool_main --service_port=50000 \\
        --container_executable=$(which tamis-worker-boot)

The worker pool calls it as it calls the container's ``/opt/apache/beam/boot``, with
``--id``, ``--provision_endpoint``, ``--artifact_endpoint``, ``--logging_endpoint`` and
``--control_endpoint``. ``tamis-worker-boot --pool --service_port=N`` starts such a pool itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

STAGED = "staged"  # where sdk_worker_main looks for the pickled main session, as in the container


def _provision_info(endpoint: str, worker_id: str):
    import grpc

    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        # The runner tells workers apart by this metadata key (as the Go boot's grpcx.WriteWorkerID).
        response = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", worker_id)])
    return response.info


def _fetch_artifacts(endpoint: str, dependencies, folder: str) -> list[str]:
    """Copy the job's staged files (main session, packages) into ``folder``, under their staged names."""
    import grpc

    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_artifact_api_pb2, beam_artifact_api_pb2_grpc, beam_runner_api_pb2

    names = []
    if not dependencies:
        return names
    os.makedirs(folder, exist_ok=True)
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        resolved = stub.ResolveArtifacts(beam_artifact_api_pb2.ResolveArtifactsRequest(artifacts=dependencies))
        for artifact in resolved.replacements:
            if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
                continue
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload).staged_name
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"staged artifact name {name!r} is not a plain file name")
            with open(os.path.join(folder, name), "wb") as f:
                for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)):
                    f.write(chunk.data)
            names.append(name)
    return names


def _install_staged(folder: str, names: list[str]) -> None:
    """Install staged Python packages as the container's boot does (requirements, extra packages,
    a --setup_file tarball), from the staged files only."""
    pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", "-q"]
    if "requirements.txt" in names:
        subprocess.run(pip + ["--no-index", "--no-build-isolation", "--find-links", folder,
                              "-r", os.path.join(folder, "requirements.txt")], check=True)
    if "extra_packages.txt" in names:
        with open(os.path.join(folder, "extra_packages.txt"), encoding="utf-8") as f:
            packages = [os.path.join(folder, line.strip()) for line in f if line.strip()]
        if packages:
            subprocess.run(pip + ["--no-deps"] + packages, check=True)
    if "workflow.tar.gz" in names:
        subprocess.run(pip + ["--no-deps", os.path.join(folder, "workflow.tar.gz")], check=True)


def _descriptor(endpoint) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(endpoint)


def worker_environment(info, worker_id: str, semi_persistent_dir: str, logging_url: str, control_url: str) -> dict:
    """The environment ``sdk_worker_main`` reads, filled from the provision info."""
    from google.protobuf import json_format

    from apache_beam.portability.api import endpoints_pb2

    env = dict(os.environ)
    env["WORKER_ID"] = worker_id
    env["PIPELINE_OPTIONS"] = json.dumps(json_format.MessageToDict(info.pipeline_options))
    env["SEMI_PERSISTENT_DIRECTORY"] = semi_persistent_dir
    logging = info.logging_endpoint if info.logging_endpoint.url else endpoints_pb2.ApiServiceDescriptor(url=logging_url)
    control = info.control_endpoint if info.control_endpoint.url else endpoints_pb2.ApiServiceDescriptor(url=control_url)
    env["LOGGING_API_SERVICE_DESCRIPTOR"] = _descriptor(logging)
    env["CONTROL_API_SERVICE_DESCRIPTOR"] = _descriptor(control)
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = _descriptor(info.status_endpoint)
    if info.runner_capabilities:
        env["RUNNER_CAPABILITIES"] = " ".join(info.runner_capabilities)
    return env


def boot(argv: list[str] | None = None) -> int:
    """The container contract: provision, stage, then run the SDK harness until it exits."""
    parser = argparse.ArgumentParser(prog="tamis-worker-boot")
    parser.add_argument("--id", required=True)
    parser.add_argument("--provision_endpoint", required=True)
    parser.add_argument("--artifact_endpoint", default="")
    parser.add_argument("--logging_endpoint", default="")
    parser.add_argument("--control_endpoint", default="")
    parser.add_argument("--semi_persistent_directory", default=None)
    args, _ = parser.parse_known_args(argv)

    info = _provision_info(args.provision_endpoint, args.id)
    work = args.semi_persistent_directory or tempfile.mkdtemp(prefix=f"beam-worker-{args.id}-")
    try:
        artifact_endpoint = info.artifact_endpoint.url or args.artifact_endpoint
        if artifact_endpoint:
            staged = os.path.join(work, STAGED)
            _install_staged(staged, _fetch_artifacts(artifact_endpoint, list(info.dependencies), staged))
        env = worker_environment(info, args.id, work, args.logging_endpoint, args.control_endpoint)
        # The pool pipes our stdout and never reads it: a chatty worker would block on a full pipe.
        return subprocess.call([sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env=env,
                               stdout=sys.stderr)
    finally:
        if not args.semi_persistent_directory:
            shutil.rmtree(work, ignore_errors=True)


def pool(argv: list[str] | None = None) -> None:
    """A worker pool whose workers boot through :func:`boot` (what ``boot --worker_pool`` does)."""
    from apache_beam.runners.worker import worker_pool_main

    executable = shutil.which("tamis-worker-boot")
    if executable is None:  # not installed as a script (a source checkout): a one-line stand-in
        folder = tempfile.mkdtemp(prefix="tamis-worker-boot-")
        executable = os.path.join(folder, "tamis-worker-boot")
        with open(executable, "w", encoding="utf-8") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} -m tamis.pipeline.worker_boot \"$@\"\n")
        os.chmod(executable, 0o755)
    worker_pool_main.main(list(argv or []) + [f"--container_executable={executable}"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--pool" in argv:
        pool([a for a in argv if a != "--pool"])
    else:
        sys.exit(boot(argv))


if __name__ == "__main__":
    main()
