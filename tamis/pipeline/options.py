"""Beam pipeline options from a run config: local runners by default, anything passed through.

Options are checked before any work starts (:func:`check_options`): Beam itself drops options it
cannot parse with a log line and finds a missing ``--project`` or an unreachable output folder
only after the job was submitted, minutes in. Each problem is one line that names the fix.
"""
from __future__ import annotations

import difflib
from urllib.parse import urlparse

from ..errors import ConfigError

# Runner names with checks of their own; any other Beam runner passes through unchecked.
DATAFLOW, FLINK, PORTABLE, DIRECT = "DataflowRunner", "FlinkRunner", "PortableRunner", "DirectRunner"
# Hosts where a "remote" runner still runs on this machine (so local paths are visible to it).
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1", "[local]", "[auto]", "embed"}
GPU_OPTION_HINT = "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


class OptionsError(ConfigError):
    """The run's Beam options cannot work; the message is one line that says what to pass."""


def beam_argv(runner: str, workers: int, beam_args: list[str]) -> list[str]:
    argv = [f"--runner={runner}"]
    passed = " ".join(beam_args)
    if runner == "DirectRunner":
        # Named explicitly so Beam does not first try to download Prism.
        if workers > 1:
            argv += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
                     "--default_sdk_harness_log_level=WARNING"]
    elif runner == "PortableRunner" and "--job_endpoint" not in passed:
        # Alone, PortableRunner means the embedded job server with the LOOPBACK environment:
        # the portable Fn API path that Flink and Dataflow use, with no Docker.
        argv += ["--job_endpoint=embed", "--environment_type=LOOPBACK"]
    if runner in JOB_SERVER_RUNNERS and "--job_server_timeout" not in passed:
        # Beam's 300 s default bounds the launcher's whole wait on the job, not only a silence:
        # every run longer than five minutes would end as "the runner stopped answering".
        argv += [f"--job_server_timeout={JOB_SERVER_TIMEOUT_S}"]
    return argv + list(beam_args)


#: Runners whose launcher waits on a job server (Beam's --job_server_timeout applies to them).
JOB_SERVER_RUNNERS = ("PortableRunner", "FlinkRunner", "SparkRunner")
JOB_SERVER_TIMEOUT_S = 7 * 24 * 3600  # a week: a run's length is no reason to stop waiting


def pipeline_options(config, workers: int | None = None):
    """Options for a run; ``workers`` overrides the config's (the cheap selection pass runs in-process)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    check_options(config)
    return PipelineOptions(beam_argv(config.runner, config.workers if workers is None else workers, config.beam_args))


# -- checks --------------------------------------------------------------------------------------


def _beam_parser():
    """Beam's own option parser with every registered options class (as ``get_all_options`` builds it)."""
    from apache_beam.options import pipeline_options as po

    parser = po._BeamArgumentParser(allow_abbrev=False, exit_on_error=False)
    for cls in {str(c): c for c in po.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def unknown_options(beam_args: list[str]) -> list[str]:
    """The arguments no Beam options class parses (Beam would drop them with a log line).

    A known option with a bad value raises :class:`OptionsError`.
    """
    import argparse

    try:
        _, unknown = _beam_parser().parse_known_args(list(beam_args))
    except argparse.ArgumentError as e:
        raise OptionsError(f"bad Beam option value: {e}") from None
    return unknown


def _unknown_message(token: str) -> str:
    from ..schemas.config import SelectConfig

    if not token.startswith("-"):
        return f"unexpected argument {token!r} (Beam options are written --name=value)"
    name = token.split("=", 1)[0]
    known = list(_beam_parser()._option_string_actions)
    known += [f"--{f.replace('_', '-')}" for f in SelectConfig.model_fields]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown option {name}: neither tamis nor Beam knows it{hint}"


def _host(address: str | None) -> str:
    if not address:
        return ""
    if address in LOCAL_HOSTS:
        return address
    return (urlparse(address if "://" in address else f"//{address}").hostname or address).lower()


def is_remote_path(path: str) -> bool:
    """True for a URI on a shared filesystem (gs://, s3://, hdfs://, ...), false for this machine's disk."""
    return "://" in path and not path.startswith("file://")


def _flag_given(beam_args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in beam_args)


def runs_elsewhere(runner: str, options) -> str | None:
    """Where the workers live when they do not share this machine's disk, else None.

    A job server on ``localhost`` does not make its workers local: EXTERNAL workers come from a
    worker pool (a sidecar container, another machine) and DOCKER workers from containers, and
    neither sees this machine's files. Only LOOPBACK and PROCESS workers of a local job server do.
    """
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions

    if runner == DATAFLOW:
        return "Dataflow"
    if runner not in (FLINK, PORTABLE):
        return None
    if runner == FLINK:
        master = options.view_as(FlinkRunnerOptions).flink_master
        if _host(master) not in LOCAL_HOSTS:
            return f"the Flink cluster at {master}"
    else:
        endpoint = options.view_as(PortableOptions).job_endpoint
        if _host(endpoint) not in LOCAL_HOSTS:
            return f"the job server at {endpoint}"
    portable = options.view_as(PortableOptions)
    environment = (portable.environment_type or "").upper()
    if environment == "EXTERNAL":
        return f"the worker pool at {portable.environment_config}"
    if environment == "DOCKER":
        image = portable.environment_config or portable.lookup_environment_option("docker_container_image")
        return f"Docker containers ({image})"
    return None


def workers_elsewhere(config) -> str | None:
    """:func:`runs_elsewhere` for a run config."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return runs_elsewhere(config.runner, PipelineOptions(beam_argv(config.runner, config.workers, config.beam_args)))


def local_paths(value) -> list[str]:
    """Every string in a (nested) value that names a file or folder on this machine's disk."""
    import os

    if isinstance(value, dict):
        return [p for v in value.values() for p in local_paths(v)]
    if isinstance(value, (list, tuple, set)):
        return [p for v in value for p in local_paths(v)]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or is_remote_path(value) or "\n" in value:
        return []
    looks_like_path = os.path.isabs(value) or value.startswith(("./", "../", "~")) or value.startswith("file://")
    if looks_like_path or (os.sep in value and os.path.exists(value)):
        return [value]
    return []


def check_prepared(config, prepared: dict) -> None:
    """Refuse, with one line, a run whose workers would be handed a path on this machine's disk
    by a selector's ``prepare()`` (a proxy, a head, a feature store): they cannot read it there."""
    where = workers_elsewhere(config)
    if not where:
        return
    for name, record in prepared.items():
        paths = local_paths(record.to_json() if hasattr(record, "to_json") else record)
        if paths:
            raise OptionsError(f"selector {name}: prepare() hands the workers {paths[0]}, a path on this machine's disk "
                               f"that workers on {where} cannot read")


def _check_dataflow(config, options) -> str | None:
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, SetupOptions, WorkerOptions

    gcp = options.view_as(GoogleCloudOptions)
    missing = [f"--{name}" for name, value in (("project", gcp.project), ("region", gcp.region),
                                               ("temp_location", gcp.temp_location or gcp.staging_location))
               if not value]
    if missing:
        return f"DataflowRunner needs {', '.join(missing)} (e.g. --project=my-project --region=us-central1 --temp_location=gs://my-bucket/tmp)"
    for name in ("temp_location", "staging_location"):
        value = getattr(gcp, name)
        if value and not value.startswith("gs://"):
            return f"--{name} must be a gs:// path on DataflowRunner, got {value!r}"
    setup = options.view_as(SetupOptions)
    if not (options.view_as(WorkerOptions).sdk_container_image or setup.setup_file or setup.extra_packages
            or setup.requirements_file):
        return ("DataflowRunner workers must be able to import tamis: pass --sdk_container_image=<image built from "
                "deploy/dataflow/Dockerfile> (or --setup_file / --extra_package)")
    if config.device.startswith("cuda"):
        asked = (gcp.dataflow_service_options or []) + (options.view_as(DebugOptions).experiments or [])
        if not any(o.startswith("worker_accelerator") for o in asked):
            return f"--device {config.device} on DataflowRunner needs GPU workers: pass {GPU_OPTION_HINT} (see deploy/dataflow)"
    return None


def _check_portable(config, options) -> str | None:
    """Flink and portable job servers: a cluster address, and workers that have tamis installed."""
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions

    if config.runner == FLINK and not _flag_given(config.beam_args, "flink_master"):
        return "FlinkRunner needs --flink_master=host:8081 (the Flink REST address; deploy/flink runs one on localhost:8081)"
    portable = options.view_as(PortableOptions)
    environment = (portable.environment_type or "").upper()
    if not environment and config.runner == FLINK and options.view_as(FlinkRunnerOptions).flink_master in ("[local]", "[auto]"):
        environment = "LOOPBACK"  # what Beam's FlinkRunner picks for an embedded cluster
    if environment in ("", "DOCKER") and not (portable.environment_config or portable.lookup_environment_option("docker_container_image")):
        return (f"{config.runner} workers would run Beam's default SDK image, which has no tamis: pass "
                "--environment_type=EXTERNAL --environment_config=localhost:50000 (the worker pool of deploy/flink), "
                "or --environment_type=DOCKER --environment_config=<image built from deploy/dataflow/Dockerfile>")
    return None


def _check_paths(config, where: str) -> str | None:
    import os

    for flag, path in [("--out", config.out)] + [("--pool", p) for p in config.pool]:
        if not is_remote_path(path):
            return (f"{flag} {path} is on this machine's disk, which workers on {where} cannot read or write: "
                    "use a shared filesystem path (gs://, s3://, hdfs://)")
    for key, value in config.param.items():  # a model folder given by a local path
        if isinstance(value, str) and "/" in value and not is_remote_path(value) and os.path.exists(value):
            return (f"--param {key}={value} is on this machine's disk, which workers on {where} cannot read: "
                    "put it on a shared filesystem (gs://, s3://); each worker machine copies it once")
    return None


def _check_with_beam(argv: list[str], runner) -> str | None:
    """Beam's own validator, as ``Pipeline()`` runs it, without its cloud calls."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, TestOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    probe = PipelineOptions(argv)
    probe.view_as(TestOptions).dry_run = True  # no soft-delete lookups on the buckets
    validator = PipelineOptionsValidator(probe, runner)
    gcs = []
    if validator.is_service_runner():  # a bad bucket name would make Beam try to create a default bucket
        gcp = probe.view_as(GoogleCloudOptions)
        gcs = [e for name in ("temp_location", "staging_location") if getattr(gcp, name)
               for e in validator.validate_gcs_path(gcp, name)]
    errors = gcs or validator.validate()
    return "Beam rejects the options: " + " ".join(e.strip() for e in errors) if errors else None


def check_options(config):
    """Build the run's PipelineOptions and check them without contacting any service.

    Raises :class:`OptionsError` (one line) for: unknown option names, a runner Beam does not
    know, DataflowRunner without --project/--region/--temp_location or without a way to install
    tamis on its workers, FlinkRunner without --flink_master, portable workers on Beam's default
    image, --workers on a non-local runner, an --out, --pool or model path on this machine's disk
    when the workers run elsewhere, and anything Beam's own validator rejects.
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import create_runner

    if _flag_given(config.beam_args, "runner"):
        raise OptionsError("set the runner with --runner (the config key 'runner'), not among the Beam arguments")
    if _flag_given(config.beam_args, "dry_run"):
        raise OptionsError("--dry_run is Beam's test flag (the job would silently not run); tamis's flag is --dry-run")
    unknown = unknown_options(config.beam_args)
    if unknown:
        raise OptionsError(_unknown_message(unknown[0]))
    try:
        runner = create_runner(config.runner)
    except (ValueError, ImportError) as e:
        raise OptionsError(str(e).splitlines()[0]) from None
    argv = beam_argv(config.runner, config.workers, config.beam_args)
    options = PipelineOptions(argv)
    if config.workers > 1 and config.runner != DIRECT:
        raise OptionsError(f"--workers sets local DirectRunner processes; {config.runner} sizes its workers with its own "
                           "options (--max_num_workers on Dataflow, --parallelism on Flink)")
    problem = None
    if config.runner == DATAFLOW:
        problem = _check_dataflow(config, options)
    elif config.runner in (FLINK, PORTABLE):
        problem = _check_portable(config, options)
    where = runs_elsewhere(config.runner, options)
    problem = problem or (where and _check_paths(config, where)) or _check_with_beam(argv, runner)
    if problem:
        raise OptionsError(problem)
    return options


def resolved_options(options) -> dict:
    """The options that differ from Beam's defaults, as Beam parsed them."""
    return options.get_all_options(drop_default=True)
