"""Beam pipeline options from a run config: local runners by default, anything passed through."""
from __future__ import annotations


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
    return argv + list(beam_args)


def pipeline_options(config, workers: int | None = None):
    """Options for a run; ``workers`` overrides the config's (the cheap selection pass runs in-process)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(beam_argv(config.runner, config.workers if workers is None else workers, config.beam_args))
