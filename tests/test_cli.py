"""The CLI as a user runs it (typer's runner, real pipelines, real files)."""
import json

import yaml
from typer.testing import CliRunner

from tamis.cli import app

from .conftest import demo_records, write_jsonl

runner = CliRunner()


def test_unknown_config_key_fails_with_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"pool": ["x.jsonl"], "out": "o", "budjet": 3}))
    res = runner.invoke(app, ["select", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "unknown config key 'budjet'" in res.output


def test_missing_target_for_targeted_selector_is_a_clear_error(tmp_path):
    pool = write_jsonl(tmp_path / "p.jsonl", demo_records(5))
    res = runner.invoke(app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o"), "--selector", "rds"])
    assert res.exit_code == 2 and "needs --target" in res.output


def test_selectors_lists_parameters():
    res = runner.invoke(app, ["selectors"])
    assert res.exit_code == 0 and "rds" in res.output and "pooling" in res.output


def test_yaml_config_and_flags_give_the_same_run_and_inspect_reads_it(tmp_path, targets_dir, tiny_encoder):
    pool = write_jsonl(tmp_path / "p.jsonl", demo_records(60))
    common = ["--budget", "6", "--shard-rows", "50", "--no-progress"]
    res = runner.invoke(app, ["select", "--pool", str(pool), "--target", f"food={targets_dir['food']}",
                              "--param", f"model={tiny_encoder}", "--out", str(tmp_path / "flags"), *common])
    assert res.exit_code == 0, res.output
    assert "input 60 = accepted 60 + rejected 0" in res.output
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"pool": [str(pool)], "target": {"food": targets_dir["food"]},
                                   "param": {"model": tiny_encoder}, "out": str(tmp_path / "yaml"),
                                   "budget": 6, "shard_rows": 50}))
    res = runner.invoke(app, ["select", "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "flags" / "manifest.json").read_text())
    b = json.loads((tmp_path / "yaml" / "manifest.json").read_text())
    assert a["counts"] == b["counts"]
    assert {k: v for k, v in a["config"].items() if k != "out"} == {k: v for k, v in b["config"].items() if k != "out"}

    res = runner.invoke(app, ["inspect", str(tmp_path / "yaml")])
    assert res.exit_code == 0, res.output
    assert "top 5 for food" in res.output and "score_rds_food" in res.output

    res = runner.invoke(app, ["reselect", str(tmp_path / "yaml"), "--budget", "0.5"])
    assert res.exit_code == 0 and "selected 30" in res.output
