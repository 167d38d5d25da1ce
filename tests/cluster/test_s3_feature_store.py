"""The feature store on ``s3://`` (an S3 API on loopback): written and read through Beam's
filesystems with the user's options, sized and pruned by ``tamis store`` the same way."""
from __future__ import annotations

import json

from ..conftest import DEMO, demo_records, write_jsonl
from .conftest import BUCKET
from .test_s3_run_folder import tamis_cli


def test_a_feature_store_on_s3_serves_a_second_run_and_prunes(s3, tmp_path, tiny_encoder):
    pool = s3.upload(write_jsonl(tmp_path / "pool.jsonl", demo_records(60)), "fs/pool.jsonl")
    food = s3.upload(DEMO / "food_dev.jsonl", "fs/food_dev.jsonl")
    model = s3.upload(tiny_encoder, "fs/tiny_encoder")
    store = f"s3://{BUCKET}/fs/features"
    metrics = {}
    for out in ("a", "b"):
        done = tamis_cli("select", "--pool", pool, "--target", f"food={food}", "--param", f"model={model}",
                         "--shard-rows", "30", "--out", f"s3://{BUCKET}/fs/{out}", "--feature-store", store,
                         "--no-progress", *s3.args)
        assert done.returncode == 0, done.stderr[-3000:]
        manifest = s3.client().get_object(Bucket=BUCKET, Key=f"fs/{out}/manifest.json")["Body"].read()
        metrics[out] = json.loads(manifest)["metrics"]
    assert metrics["a"]["rds_features_computed"] == 60 and metrics["b"]["rds_features_reused"] == 60
    assert "rds_features_computed" not in metrics["b"]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="fs/features/")["Contents"]]
    assert len(keys) == 2 and all(k.startswith("fs/features/embedding/") and k.endswith(".npz") for k in keys), keys

    du = tamis_cli("store", "du", store, *s3.args)
    assert du.returncode == 0, du.stderr[-3000:]
    assert "embedding" in du.stdout and "60" in du.stdout
    pruned = tamis_cli("store", "prune", store, "--older-than", "0", "--yes", *s3.args)
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "deleted 2 entries" in " ".join(pruned.stdout.split())
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="fs/features/")
