"""The model toolkit selectors share: one proxy spec, one context clamp, one labelled-pool test."""
import numpy as np

from tamis.irt import loss_answers
from tamis.models.lm import encode_for_model, load_causal_lm
from tamis.models.proxies import ProxySpec, proxy_ref
from tamis.models.records import data_kind, is_labelled
from tamis.schemas.proxy import ProxyModelConfig
from tamis.selectors.color import ColorFilterSelector
from tamis.selectors.less import LessSelector


def test_color_prior_and_less_base_are_one_build_because_their_specs_are_equal():
    """LESS no longer copies CoLoR-Filter's batch size and learning rate: both take the toolkit's
    build recipe, so with the default shape the two builds have one cache key."""
    prior, base = ColorFilterSelector().prior_spec(), LessSelector().build_spec()
    assert prior.model is None and base.model is None
    assert prior.build_config(7) == base.build_config(7)
    assert ProxySpec().build_config(0) == ProxyModelConfig(seed=0)  # the recipe is ProxyModelConfig's
    # A different learning rate is a different proxy, and says so in its key.
    assert ColorFilterSelector(lr=5e-4).prior_spec().build_config(7) != base.build_config(7)


def test_an_untrained_proxy_is_referenced_by_its_model_name():
    spec = ProxySpec(model="some/model", epochs=0, trust_remote_code=True)
    assert proxy_ref(None, spec) == {"model": "some/model", "trust_remote_code": True}


def test_encode_for_model_cuts_to_the_fewer_of_run_and_model_positions(tiny_causal):
    model, tok = load_causal_lm(tiny_causal)  # 128 positions
    long = {"id": "x", "messages": None, "text": " ".join(["word"] * 2000), "extra": None}
    assert len(encode_for_model(model, tok, [long], 4096)[0]) == 128
    assert len(encode_for_model(model, tok, [long], 32)[0]) == 32


def test_labelled_pool_needs_a_label_on_every_row_and_two_classes():
    assert is_labelled(["a", "b", "a"]) and data_kind("auto", ["a", "b"]) == "classification"
    assert not is_labelled(["a", None]) and data_kind("auto", ["a", None]) == "lm"
    assert not is_labelled(["a", "a"]) and not is_labelled([])
    assert data_kind("classification", []) == "classification" and data_kind("lm", ["a", "b"]) == "lm"
    assert is_labelled([1, "1"])  # 1 and "1" are two classes


def test_loss_answers_compare_float32_losses_exactly():
    losses = np.array([1.0, np.float32(1.1), np.nan], dtype=np.float32)
    threshold = float(np.float32(1.1)) + 1e-12  # between two float32 values: must not round onto 1.1
    np.testing.assert_array_equal(loss_answers(losses, threshold), [1.0, 1.0, np.nan])
