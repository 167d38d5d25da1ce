"""IRT fitting, the DDS-MAE scheduler, the curriculum sampler, and the irt selector end to end."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

import tamis  # noqa: E402
from tamis.io.runfolder import RunFolder
from tamis.curriculum import DDSMAE, CurriculumSampler, epoch_items, hf_callback  # noqa: E402
from tamis.irt import estimate_theta, fit_irt, fit_items  # noqa: E402
from tamis.selectors.irt import (  # noqa: E402
    IRTSelector,
    crowd_spread,
    curriculum_stage,
    read_responses,
    response_matrix,
)

from .conftest import demo_records, write_jsonl  # noqa: E402

# A crowd of 2 widths x 4 checkpoints of 1-layer proxies: enough spread for distinct difficulties.
CROWD = {"crowd_widths": [16, 32], "crowd_checkpoints": 4, "calibration_size": 100, "sample_size": 150,
         "proxy_epochs": 2, "lr": 5e-3, "batch_size": 16, "n_layer": 1, "vocab_size": 300, "positions": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def simulate(n_subjects, n_items, seed=0, a_sd=0.0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n_subjects)
    b = rng.uniform(-3, 3, size=n_items)
    a = rng.lognormal(0.0, a_sd, size=n_items) if a_sd else np.ones(n_items)
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    return (rng.random((n_subjects, n_items)) < p).astype(np.float64), theta, b, a


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0])


# -- fitting --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["1pl", "2pl"])
def test_recovers_difficulty_and_ability(model):
    y, theta, b, _ = simulate(30, 2000, seed=1, a_sd=0.3)
    fit = fit_irt(y, model=model)
    assert fit.converged and fit.model == model
    assert spearman(fit.b, b) >= 0.9
    assert spearman(fit.theta, theta) >= 0.9
    assert fit.b.shape == fit.a.shape == fit.se_b.shape == (2000,) and fit.theta.shape == (30,)


def test_unanimous_items_stay_finite_and_standard_errors_are_positive():
    y, _, _, _ = simulate(20, 300, seed=2)
    y[:, :5] = 1.0  # everybody right
    y[:, 5:10] = 0.0  # everybody wrong
    y[3, 20:60] = np.nan  # missing answers
    for model in ("1pl", "2pl"):
        fit = fit_irt(y, model=model)
        for values in (fit.b, fit.a, fit.theta, fit.se_b, fit.se_theta):
            assert np.isfinite(values).all()
        assert (fit.se_b > 0).all() and (fit.se_theta > 0).all()
        assert (fit.se_a > 0).all() if model == "2pl" else (fit.se_a == 0).all() and (fit.a == 1).all()
        assert fit.b[:5].max() < np.median(fit.b) < fit.b[5:10].min()
        again = fit_items(y, fit.theta, model=model)
        assert np.isfinite(again.b).all() and (again.se_b > 0).all()


def test_2pl_recovers_discrimination():
    y, _, _, a = simulate(300, 300, seed=3, a_sd=0.5)
    fit = fit_irt(y, model="2pl")
    assert spearman(fit.a, a) >= 0.7
    assert abs(np.log(fit.a).mean() - np.log(a).mean()) < 0.3


def test_items_given_abilities_match_the_joint_fit_whatever_the_chunks():
    y, _, _, _ = simulate(25, 600, seed=4, a_sd=0.3)
    for model in ("1pl", "2pl"):
        joint = fit_irt(y, model=model)
        whole = fit_items(y, joint.theta, model=model)
        np.testing.assert_allclose(whole.b, joint.b, atol=1e-6)
        np.testing.assert_allclose(whole.a, joint.a, atol=1e-6)
        chunks = [fit_items(y[:, c], joint.theta, model=model) for c in np.array_split(np.arange(600), 7)]
        np.testing.assert_allclose(np.concatenate([c.b for c in chunks]), whole.b, atol=1e-12)
        np.testing.assert_allclose(np.concatenate([c.se_b for c in chunks]), whole.se_b, atol=1e-12)


def test_a_subject_with_no_answers_changes_nothing():
    y, _, _, _ = simulate(15, 200, seed=5)
    with_ghost = np.vstack([y, np.full((1, 200), np.nan)])
    a, b = fit_irt(y, model="1pl"), fit_irt(with_ghost, model="1pl")
    np.testing.assert_allclose(b.b, a.b, atol=1e-8)
    assert b.theta[-1] == pytest.approx(0.0, abs=1e-9)  # the prior's mode


def test_estimate_theta_is_map_and_orders_abilities():
    b = np.linspace(-2, 2, 41)
    answers = np.array([(b < cut).astype(float) for cut in (-3.0, -1.0, 0.0, 1.0, 3.0)])
    theta, se = estimate_theta(answers, b)
    assert np.all(np.diff(theta) > 0) and np.isfinite(theta).all() and (se > 0).all()
    one, _ = estimate_theta(answers[2], b)
    assert one == pytest.approx(theta[2])
    # MAP: the gradient of log-likelihood plus the N(0, 1) log prior vanishes there.
    p = 1 / (1 + np.exp(-(theta[:, None] - b)))
    np.testing.assert_allclose((answers - p).sum(1) - theta, 0.0, atol=1e-6)


def test_crowd_spread_counts_subjects_that_answer_everything_alike():
    answers = np.array([[0, 0, 0, 0], [1, 0, 1, np.nan], [1, 1, 1, 1], [np.nan] * 4, [0, np.nan, 0, 0]])
    spread = crowd_spread(answers)
    np.testing.assert_allclose(spread["subject_correct"], [0, 2 / 3, 1, np.nan, 0])
    assert spread["subjects_all_wrong"] == 2 and spread["subjects_all_right"] == 1


# -- scheduler and sampler -------------------------------------------------------------------------
def test_epoch_items_take_b_under_theta_with_a_floor_of_100():
    b = np.linspace(-3, 3, 1000)
    b[7] = np.nan
    chosen = epoch_items(b, 0.0)
    assert set(chosen) == set(np.flatnonzero(b <= 0.0)) and np.all(np.diff(b[chosen]) >= 0)
    floor = epoch_items(b, -10.0)
    assert len(floor) == 100 and set(floor) == set(np.argsort(np.nan_to_num(b, nan=9))[:100])
    assert 7 not in epoch_items(b, 10.0)


def test_ddsmae_raises_the_threshold_by_0_1_when_theta_does_not_improve():
    b = np.linspace(-3, 3, 1000)
    s = DDSMAE(b)
    assert s.update(0.5) == pytest.approx(0.5)
    assert s.update(0.3) == pytest.approx(0.6)  # no improvement: +0.1
    assert s.update(0.5) == pytest.approx(0.7)  # equal to the best is no improvement either
    assert s.update(0.9) == pytest.approx(0.9)  # improvement: the threshold is theta again
    assert len(s.items()) == int((b <= 0.9).sum())
    assert [h["improved"] for h in s.history_] == [True, False, False, True]
    # From probe answers: a model that gets the easy half right is estimated near the middle.
    probe_b = np.linspace(-2, 2, 50)
    items = DDSMAE(b).step_epoch((probe_b < 0).astype(float), probe_b)
    theta = DDSMAE(b).estimate_theta((probe_b < 0).astype(float), probe_b)
    assert abs(theta) < 0.3 and set(items) == set(np.flatnonzero(b <= theta))
    weak = DDSMAE(b).step_epoch(np.zeros(50), probe_b)
    assert len(weak) == 100 and b[weak].max() < -2.3


def test_sampler_drives_a_dataloader_in_curriculum_order():
    from torch.utils.data import DataLoader, TensorDataset

    rng = np.random.default_rng(0)
    b = rng.normal(size=500)
    stage = curriculum_stage(b, [-0.5, 0.0, 0.5])
    dataset = TensorDataset(torch.arange(500))
    sampler = CurriculumSampler(b, stage)
    seen = torch.cat([batch[0] for batch in DataLoader(dataset, batch_size=32, sampler=sampler)]).numpy()
    assert sorted(seen) == list(range(500))
    assert np.all(np.diff(stage[seen]) >= 0) and np.all(np.diff(b[seen]) >= 0)

    shuffled = CurriculumSampler(b, stage, shuffle=True, seed=1)
    first = list(shuffled)
    shuffled.set_epoch(1)
    assert first != list(shuffled) and np.all(np.diff(stage[first]) >= 0) and sorted(first) == list(range(500))

    scheduled = CurriculumSampler(b, stage, scheduler=DDSMAE(b, min_items=100))
    loader = DataLoader(dataset, batch_size=32, sampler=scheduled)
    assert len(loader) == 16  # before any estimate: everything
    probe_b = np.linspace(-2, 2, 40)
    admitted = scheduled.update((probe_b < 0).astype(float), probe_b)
    theta = scheduled.scheduler.threshold_
    epoch = torch.cat([batch[0] for batch in loader]).numpy()
    assert len(epoch) == admitted == int((b <= theta).sum()) >= 100
    assert b[epoch].max() <= theta and len(loader) == -(-admitted // 32)
    fixed = CurriculumSampler(b, stage, scheduler=scheduled.scheduler, epoch_size=500)
    assert len(list(fixed)) == 500 and set(fixed) == set(epoch)


def test_hugging_face_trainer_follows_the_sampler():
    from transformers import Trainer, TrainingArguments

    rng = np.random.default_rng(1)
    n = 300
    b = rng.normal(size=n)
    data = [{"x": torch.tensor([1.0]), "idx": torch.tensor(i)} for i in range(n)]
    seen: list[int] = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, idx):
            seen.extend(idx.tolist())
            return {"loss": ((self.w * x - 1) ** 2).mean()}

    sampler = CurriculumSampler(b, scheduler=DDSMAE(b, min_items=100), epoch_size=n)
    capacity = iter([-1.0, 0.0, 1.0])
    probe_b = np.linspace(-2, 2, 40)
    def probe(model):  # stands in for the model's answers on the probe set: better every epoch
        return (probe_b < next(capacity)).astype(float), probe_b

    class CurriculumTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return sampler

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=30, num_train_epochs=3,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = CurriculumTrainer(model=Recorder(), args=args, train_dataset=data, callbacks=[hf_callback(sampler, probe)])
    trainer.train()
    history = sampler.scheduler.history_
    assert len(history) == 3 and len(seen) == 3 * n
    thresholds = [h["threshold"] for h in history]
    assert thresholds[0] < thresholds[1] < thresholds[2]
    for epoch, h in enumerate(history):
        got = np.array(seen[epoch * n:(epoch + 1) * n])
        admitted = np.flatnonzero(b <= h["threshold"])
        if len(admitted) < 100:
            admitted = np.argsort(b)[:100]
        assert set(got) == set(admitted)
        order = admitted[np.argsort(b[admitted])]
        assert list(got[: len(order)]) == list(order)  # easiest first, then cycled


# -- how the crowds answer -------------------------------------------------------------------------
def test_a_learner_is_judged_on_the_probe_as_the_lm_crowd_was(tiny_causal):
    from tamis.curriculum import lm_probe_answers
    from tamis.models.lm import Encoded, encode_records, load_causal_lm
    from tamis.models.stats import mean_token_loss

    model, tok = load_causal_lm(tiny_causal)
    examples = encode_records(tok, demo_records(40), 64) + [Encoded([1, 2, 3], [False, False, False])]
    loss = mean_token_loss(model, examples, batch_tokens=512)
    threshold = float(np.median(loss[:-1]))
    model.train()
    answers = lm_probe_answers(model, examples, threshold, batch_tokens=512)
    assert model.training  # its mode is given back; the answers were taken without dropout
    np.testing.assert_array_equal(answers[:-1], (loss[:-1] < threshold).astype(float))
    assert np.isnan(answers[-1]) and 0.4 <= np.nanmean(answers) <= 0.6
    # Fed to DDS-MAE as they are: NaN answers are skipped, and more right answers, more ability.
    b = np.linspace(-2, 2, len(examples))
    theta = DDSMAE(b).estimate_theta(answers, b)
    assert DDSMAE(b).estimate_theta(np.where(np.isnan(answers), np.nan, 1.0), b) > theta


def test_the_one_mean_token_loss_is_sequence_stats_loss_bit_for_bit(tiny_causal):
    """Every selector (CoLoR-Filter, IRT's crowd, kMQ's refinement, the curriculum probe) takes
    its mean token loss from mean_token_loss; EL2N's sequence_stats must agree to the bit."""
    from tamis.models.lm import Encoded, encode_records, load_causal_lm
    from tamis.models.stats import mean_token_loss, sequence_stats

    model, tok = load_causal_lm(tiny_causal)
    examples = encode_records(tok, demo_records(30), 64) + [Encoded([1, 2, 3], [False, False, False])]
    for batch_tokens in (64, 512, 16_384):
        got = mean_token_loss(model, examples, batch_tokens=batch_tokens)
        want = sequence_stats(model, examples, batch_tokens=batch_tokens)["loss"]
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert np.isnan(got[-1])  # nothing scored: no answer


def test_classifier_crowd_answers_labels_and_orders_difficulty(tiny_encoder):
    from tamis.selectors import PoolSample, RunContext
    from tamis.selectors.irt import IRTSelector

    def labelled(r):  # part of speech, from the WordNet id: learnable from the text
        return dict(r, text=None, extra=json.dumps({"label": r["id"].split("-")[1]}))

    pool = [labelled(r) for r in demo_records(300)]
    selector = IRTSelector(embedder=tiny_encoder, sample_size=150, calibration_size=100,
                           head_sizes=(0, 16), head_epochs=(1, 6))
    context = RunContext(max_length=64, batch_tokens=2048)
    prepared = selector.prepare(PoolSample(lambda: pool), None, context)
    assert prepared.data_kind == "classification" and len(prepared.subjects) == 4 == len(prepared.theta)
    selector.setup(context, prepared, None)
    rows = pool[250:] + [dict(pool[0], extra=None)]  # the last one has no label: no answers
    answers = selector.answers(rows)
    assert answers.shape == (4, 51) and np.isnan(answers[:, -1]).all() and np.isin(answers[:, :-1], [0, 1]).all()
    b = selector.score(rows)["difficulty"].astype(np.float64)
    assert np.isfinite(b).all() and b[-1] == pytest.approx(0.0, abs=1e-6)  # the prior's mode
    right = answers[:, :-1].sum(0)
    for i in range(50):  # 1PL: fewer subjects right means harder, equal counts equal difficulty
        for j in range(50):
            if right[i] < right[j]:
                assert b[i] > b[j]
            elif right[i] == right[j]:
                assert b[i] == pytest.approx(b[j], abs=1e-5)
    assert "irt.heads" in selector.model_info()


# -- the selector, end to end ----------------------------------------------------------------------
def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


def test_select_with_a_crowd_writes_difficulty_and_a_curriculum(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(300))
    out = tmp_path / "out"
    summary = tamis.select(pool=[str(pool)], selector=["irt"], param=CROWD, budget=0.5, shard_rows=100, out=str(out))
    assert summary.counts["accepted"] == 300 and summary.counts["selected"] == 150
    table = read_shards(out)
    schema = table.schema
    assert schema.field("score_irt").type == pa.float32() and schema.field("difficulty").type == pa.float32()
    assert schema.field("discrimination").type == pa.float32() and schema.field("curriculum_stage").type == pa.int32()
    b = table.column("difficulty").to_numpy()
    assert np.isfinite(b).all() and len(np.unique(b)) > 3
    np.testing.assert_array_equal(table.column("score_irt").to_numpy(), b)
    assert (table.column("discrimination").to_numpy() == 1).all()  # 1PL by default
    manifest = json.loads((out / "manifest.json").read_text())
    prepared = IRTSelector.prepared_type.from_json(manifest["prepared"]["irt"])  # the record, as reselect rebuilds it
    assert len(prepared.subjects) == len(prepared.theta) == 8
    # The crowd's spread is on record: each subject's share right on the calibration rows agrees
    # with its fitted ability, and the count of subjects that answered every row alike.
    calibration = prepared.calibration
    share = np.array(calibration["subject_correct"])
    assert len(share) == 8 and np.all((share >= 0) & (share <= 1))
    assert share.mean() == pytest.approx(calibration["mean_correct"], abs=0.02)  # no row lacks a loss
    assert calibration["subjects_all_wrong"] == int((share == 0).sum()) < 8
    theta = np.array(prepared.theta)
    assert spearman(share, theta) > 0.9  # 1PL: ability is monotone in the count right
    assert "irt.crowd.w16" in manifest["models"] and "irt.crowd.w32" in manifest["models"]
    stage = table.column("curriculum_stage").to_numpy()
    np.testing.assert_array_equal(stage, curriculum_stage(b, prepared.stage_edges))
    assert set(stage) <= {0, 1, 2, 3} and len(set(stage)) > 1
    selected = table.column("selected").to_numpy()
    assert b[selected].min() >= b[~selected].max()  # the harder half

    ranked = tamis.load_selected(str(out))
    assert ranked["rank"] == list(range(1, 151))
    easy_first = tamis.load_selected(str(out), curriculum=True)
    keys = list(zip(easy_first["curriculum_stage"], easy_first["difficulty"]))
    assert keys == sorted(keys) and len(keys) == 150
    assert set(easy_first["id"]) == set(ranked["id"])


def test_select_from_a_responses_file(tmp_path):
    rows = demo_records(200)
    ids = [r["id"] for r in rows]
    y, _, _, _ = simulate(12, 150, seed=6)
    answers = [{"subject": f"model-{j}", "item": ids[i], "correct": bool(y[j, i])} for j in range(12) for i in range(150)]
    answers.append(dict(answers[0]))  # a repeated pair is averaged with itself
    path = write_jsonl(tmp_path / "responses.jsonl", answers)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    out = tmp_path / "out"
    tamis.select(pool=[str(pool)], selector=["irt"], param={"responses": str(path)}, budget=20, shard_rows=80,
                 out=str(out))
    table = read_shards(out)
    by_id = dict(zip(table.column("id").to_pylist(), table.column("difficulty").to_pylist()))
    matrix, subjects, items = response_matrix(read_responses(path.read_bytes(), "responses.jsonl"))
    assert matrix.shape == (12, 150) and subjects[0] == "model-0"
    fit = fit_irt(matrix, model="1pl")
    np.testing.assert_allclose([by_id[i] for i in items], fit.b, rtol=1e-5, atol=1e-5)
    unknown = [i for i in ids if i not in set(items)]
    assert all(np.isnan(by_id[i]) for i in unknown)
    stage = dict(zip(table.column("id").to_pylist(), table.column("curriculum_stage").to_pylist()))
    assert all(stage[i] == -1 for i in unknown)
    chosen = table.filter(table.column("selected"))
    assert chosen.num_rows == 20 and not set(chosen.column("id").to_pylist()) & set(unknown)
    assert min(chosen.column("difficulty").to_pylist()) >= np.sort(fit.b)[-20] - 1e-5

    # The same answers as Parquet read back to the same matrix.
    pq.write_table(pa.Table.from_pylist(answers), tmp_path / "responses.parquet")
    again, _, _ = response_matrix(read_responses((tmp_path / "responses.parquet").read_bytes(), "p"))
    np.testing.assert_array_equal(again, matrix)
    with pytest.raises(ValueError, match="subject, item, correct"):
        read_responses(b'{"subject": "m", "item": "x"}\n', "bad.jsonl")


def test_ddsmae_starts_from_pudf_caps_or_from_the_easiest_rows():
    """PUDF's prev_cap=-5, cur_cap=0: a first theta at or below -5 is no progress, so the first
    epoch trains at capacity 0.1; "easiest" takes any first theta as the threshold."""
    b = np.linspace(-3, 3, 1001)
    pudf = DDSMAE(b)
    assert pudf.update(-6.0) == pytest.approx(0.1)
    assert len(pudf.items()) == np.sum(b <= 0.1)  # about half the rows
    assert pudf.update(-5.5) == pytest.approx(0.2)
    easiest = DDSMAE(b, start="easiest")
    assert easiest.update(-6.0) == pytest.approx(-6.0)
    assert len(easiest.items()) == 100  # the min_items easiest
    assert DDSMAE(b).update(-4.0) == DDSMAE(b, start="easiest").update(-4.0) == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="start"):
        DDSMAE(b, start="zero")
