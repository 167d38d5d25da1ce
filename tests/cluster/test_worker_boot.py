"""The worker boot shim hands the SDK harness what the provision service says (no root needed).

The whole path, through a real job server and worker pool, is the rehearsal (test_rehearsal.py);
this checks the hand-over itself: the options the launcher submitted arrive, as Beam's own
harness reads them, with the endpoints the runner gave.
"""
from __future__ import annotations

from google.protobuf import struct_pb2

from apache_beam.options.pipeline_options import PipelineOptions, S3Options
from apache_beam.portability.api import beam_provision_api_pb2, endpoints_pb2
from apache_beam.runners.worker import sdk_worker_main
from tamis.pipeline.worker_boot import worker_environment


def test_the_submitted_s3_options_reach_the_harness(tmp_path):
    submitted = PipelineOptions(["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_access_key_id=k",
                                 "--s3_secret_access_key=s", "--s3_region_name=us-east-1"])
    options = struct_pb2.Struct()
    # What the portable runner sends: each option under its URN (beam:option:NAME:v1).
    options.update({f"beam:option:{k}:v1": v for k, v in submitted.get_all_options(drop_default=True).items()})
    info = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=options, runner_capabilities=["beam:protocol:progress_reporting:v1"],
        control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="host:1"),
        logging_endpoint=endpoints_pb2.ApiServiceDescriptor(url="host:2"))

    env = worker_environment(info, "worker_7", str(tmp_path), logging_url="", control_url="")

    received = PipelineOptions.from_dictionary(sdk_worker_main._load_pipeline_options(env["PIPELINE_OPTIONS"]))
    s3 = received.view_as(S3Options)
    assert (s3.s3_endpoint_url, s3.s3_access_key_id, s3.s3_secret_access_key, s3.s3_region_name) == \
        ("http://127.0.0.1:9000", "k", "s", "us-east-1")
    assert env["WORKER_ID"] == "worker_7" and env["SEMI_PERSISTENT_DIRECTORY"] == str(tmp_path)
    assert 'url: "host:1"' in env["CONTROL_API_SERVICE_DESCRIPTOR"]
    assert 'url: "host:2"' in env["LOGGING_API_SERVICE_DESCRIPTOR"]
    assert env["RUNNER_CAPABILITIES"] == "beam:protocol:progress_reporting:v1"


def test_endpoints_from_the_pool_fill_in_where_provision_gives_none(tmp_path):
    info = beam_provision_api_pb2.ProvisionInfo()
    env = worker_environment(info, "w", str(tmp_path), logging_url="pool:3", control_url="pool:4")
    assert 'url: "pool:4"' in env["CONTROL_API_SERVICE_DESCRIPTOR"]
    assert 'url: "pool:3"' in env["LOGGING_API_SERVICE_DESCRIPTOR"]
    assert sdk_worker_main._load_pipeline_options(env["PIPELINE_OPTIONS"]) == {}
