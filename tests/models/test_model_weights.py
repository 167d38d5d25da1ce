"""Every weight of a model folder loads, or the run stops in one line (issue 26).

transformers fills a tensor that a checkpoint lacks with random values and logs it; tamis refuses
such a folder, except where the config's tied embeddings explain the gap.
"""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tamis.models.lm import load_causal_lm
from tamis.models.loading import ModelWeightsError, load_backbone

from ..conftest import DEMO


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory, tiny_causal) -> str:
    """A tiny Llama with tied embeddings, saved as a tied model can be: the output embedding
    (``lm_head.weight``) alone, no ``model.embed_tokens.weight``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tied_llama")
    tok = AutoTokenizer.from_pretrained(tiny_causal)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    tensors = load_file(d / "model.safetensors")
    embedding = tensors.pop("model.embed_tokens.weight", None)
    tensors["lm_head.weight"] = (embedding if embedding is not None else tensors["lm_head.weight"]).clone()
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    return str(d)


def drop_tensor(src: str, dest, prefix: str) -> str:
    """A copy of the model folder without the first tensor whose name starts with ``prefix``."""
    import shutil

    shutil.copytree(src, dest)
    tensors = load_file(dest / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.startswith(prefix))
    del tensors[name]
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return name


def test_a_backbone_takes_its_tied_input_embedding_from_the_output_one(tied_llama):
    causal, tok = load_causal_lm(tied_llama)
    backbone = load_backbone(tied_llama)
    assert torch.equal(backbone.get_input_embeddings().weight, causal.get_output_embeddings().weight)
    ids = tok("a small test sentence", return_tensors="pt")
    with torch.no_grad():
        direct = backbone(**ids).last_hidden_state
        through = causal(**ids, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(direct, through, atol=1e-5)


@pytest.mark.parametrize("prefix", ["layers.1.mlp", "norm."])
def test_a_backbone_missing_a_tensor_is_refused_naming_folder_and_tensor(tmp_path, tied_llama, prefix):
    folder = tmp_path / "broken"
    name = drop_tensor(tied_llama, folder, f"model.{prefix}")
    with pytest.raises(ModelWeightsError, match=rf"'{folder}'.*missing {name.removeprefix('model.')}"):
        load_backbone(str(folder))


def test_a_causal_lm_missing_a_tensor_is_refused(tmp_path, tiny_causal):
    folder = tmp_path / "broken"
    name = drop_tensor(tiny_causal, folder, "transformer.h.1.attn")
    with pytest.raises(ModelWeightsError, match=rf"missing {name}"):
        load_causal_lm(str(folder))


def test_an_encoder_missing_a_tensor_stops_select_in_one_line(tmp_path, tiny_encoder):
    folder = tmp_path / "encoder"
    name = drop_tensor(tiny_encoder, folder, "encoder.layer.0.attention")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) + "\n" for i in range(5)))
    done = subprocess.run([sys.executable, "-m", "tamis", "select", "--pool", str(pool), "--target",
                           f"food={DEMO / 'food_dev.jsonl'}", "--selector", "rds", "--param", f"rds.model={folder}",
                           "--out", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tamis: model ") and name in lines[0], done.stderr[-3000:]
