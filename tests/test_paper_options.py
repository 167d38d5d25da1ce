"""The papers' recipes as options: what each option changes, checked on tiny real models."""
import numpy as np
import pytest

from tamis.irt import fit_irt
from tamis.models.lm import encode_for_model, load_causal_lm
from tamis.models.stats import mean_token_loss
from tamis.models.train import _step_loss
from tamis.schemas.proxy import TrainConfig
from tamis.selectors import RunContext
from tamis.selectors.color import ColorFilterSelector
from tamis.selectors.el2n import EL2NSelector
from tamis.selectors.irt import VAGUE_SD, IRTSelector
from tamis.selectors.less import LessSelector

from .conftest import demo_records


@pytest.mark.parametrize("weighting", ["token", "example"])
def test_step_loss_weights_tokens_or_examples(tiny_causal, one_thread, weighting):
    """'example' is the mean of each example's token mean (LESS: batch 1 x accumulation), 'token' the
    mean over all the step's tokens; either way, whatever the micro-batches."""
    model, tok = load_causal_lm(tiny_causal)
    records = demo_records(6)
    examples = encode_for_model(model, tok, records, 64)
    per_example = mean_token_loss(model, examples).astype(np.float64)
    counts = np.array([e.n_scored for e in examples])
    assert len(set(counts.tolist())) > 1  # unequal lengths, so the two weightings differ
    want = per_example.mean() if weighting == "example" else (per_example * counts).sum() / counts.sum()
    for micro in (16, 10_000):  # one example per forward pass, or all at once
        config = TrainConfig(loss_weighting=weighting, micro_batch_tokens=micro)
        model.zero_grad()
        got = _step_loss(model, examples, list(range(6)), config, tok.pad_token_id, "cpu")
        assert got == pytest.approx(want, rel=1e-5)


def test_less_options_reach_the_warmup(tiny_causal):
    context = RunContext(max_length=512, dtype="bfloat16")
    paper = LessSelector(model=tiny_causal)
    config = paper.warmup_config(paper.own_context(context))
    assert config.loss_weighting == "example" and config.dtype == "bfloat16" and config.max_length == 512
    assert (config.lora_r, config.lora_alpha, config.lr) == (128, 512.0, 2e-5)
    long = LessSelector(model=tiny_causal, max_length=2048, warmup_loss="token")
    config = long.warmup_config(long.own_context(context))
    assert config.max_length == 2048 and config.loss_weighting == "token"
    with pytest.raises(ValueError, match="warmup_loss"):
        LessSelector(warmup_loss="tokens")


def test_color_defaults_follow_whether_a_model_is_given(tiny_causal):
    pretrained = ColorFilterSelector(model=tiny_causal).settings()
    assert pretrained == {"mode": "lora", "prior_epochs": 0, "conditional_mode": "lora", "finetune_epochs": 4,
                          "finetune_lr": 1e-4}
    built = ColorFilterSelector().settings()
    assert built == {"mode": "full", "prior_epochs": 2, "conditional_mode": "full", "finetune_epochs": 4,
                     "finetune_lr": 1e-3}
    paper = ColorFilterSelector(model=tiny_causal, mode="full", finetune_epochs=1, finetune_lr=1e-3).settings()
    assert paper["conditional_mode"] == "full" and paper["finetune_epochs"] == 1 and paper["finetune_lr"] == 1e-3
    with pytest.raises(ValueError, match="prior_epochs"):
        ColorFilterSelector(prior_epochs=0)


def test_irt_vague_prior_spreads_a_small_crowds_difficulties():
    """py-irt's vague 1PL prior on b against N(0, 1): same order, wider tails (fidelity.md I2)."""
    theta_grid = np.linspace(-1.5, 1.5, 16)
    rng = np.random.default_rng(0)
    b_true = rng.normal(0, 1.5, 300)
    answers = (rng.random((16, 300)) < 1 / (1 + np.exp(-(theta_grid[:, None] - b_true)))).astype(float)
    normal = fit_irt(answers, prior_sd=1.0)
    vague = fit_irt(answers, prior_sd=VAGUE_SD)
    inner = (answers.mean(0) > 0) & (answers.mean(0) < 1)
    # Under 1PL b depends only on the item's count of right answers: the same order under both priors.
    right = answers.sum(0)[inner]
    for b in (normal.b[inner], vague.b[inner]):
        order = np.argsort(-right, kind="stable")
        assert (np.diff(b[order]) >= -1e-6).all()
    assert vague.b[inner].std() > 1.2 * normal.b[inner].std()
    assert IRTSelector(irt_prior="vague").b_prior_sd() == VAGUE_SD and IRTSelector().b_prior_sd() == 1.0
    with pytest.raises(ValueError, match="vague"):
        IRTSelector(irt_prior="vague", irt_model="2pl")


def test_el2n_defaults_and_whole_pool_sample():
    assert EL2NSelector().runs == 10  # data_diet: at least 10 runs
    selector = EL2NSelector(sample_size=None)
    assert selector.proxy_spec(n_sample=1234).sample_size == 1234
    with pytest.raises(ValueError, match="sample_size"):
        EL2NSelector(sample_size=0)
