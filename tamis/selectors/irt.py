"""IRT difficulty (PUDF's IRT-AC, Meng et al.): how hard each example is for a crowd of models.

A crowd of subjects answers every example right or wrong; an item response model turns the
answers into a difficulty b per example, on the logit scale of the subjects' abilities theta
(see :mod:`tamis.irt`). Three sources of answers:

* **A crowd of language models** (the default for chat and text records): small GPT-2 proxies
  trained from scratch on a pool slice, one run per width in ``crowd_widths``, each saving
  ``crowd_checkpoints`` checkpoints spread evenly over its training. Every checkpoint is one
  subject (2 widths x 8 = 16 by default), so the crowd spans weak to strong models. A subject
  answers a record right when its mean token loss on the scored tokens is under a threshold:
  ``loss_threshold``, or by default the median loss over the whole calibration matrix, so about
  half of all answers are right and the items spread. With ``model`` (a pretrained LM, HF id or
  folder) the crowd is that model itself plus the ``crowd_checkpoints`` checkpoints of one short
  LoRA fine-tune of it on the pool slice (PUDF's crowd, likewise, is pretrained models fine-tuned
  for varied lengths); every subject then shares the model's tokenizer.
* **A crowd of classifiers** (classification records: every sampled record has a ``label`` in
  its extra fields, as for ``el2n``): heads on frozen sentence embeddings, one per
  (size in ``head_sizes``, training length in ``head_epochs``), 4 x 4 = 16 by default. A head
  answers right when its predicted class is the record's label.
* **A user file** (``responses``): Parquet or JSONL rows of (subject, item, correct), for example
  leaderboard results, where items are pool ids. It is fitted once; scoring looks ids up (a row
  missing from the file gets NaN and stage -1, and is never selected).

With a crowd, ``prepare`` fits abilities jointly with the items of a calibration sample of the
pool (rows the crowd did not train on); ``score`` then fits each record's b (and a) from the
crowd's answers given those fixed abilities. Items are independent given abilities, so chunking
the pool changes no value. Quantile bins of the calibration difficulties, computed once in
``prepare`` so every worker agrees, give ``curriculum_stage`` (0 = easiest).

Columns: ``score_irt`` = ``difficulty`` (higher is harder), ``discrimination`` (1 under 1PL) and
``curriculum_stage``. The default selection keeps the harder half, after leaving out the
hardest ``skip_hardest`` fraction (often noise). For a curriculum over the whole pool select
everything (``--budget`` at least the pool size) and read it back easiest first with
``tamis.load_selected(out, curriculum=True)``; :mod:`tamis.curriculum` schedules it (DDS-MAE).

Cost: every subject scores every row, so scoring is ``len(crowd)`` forward passes per row.
Pitfalls: under 1PL a row's b depends only on how many subjects got it right, so J subjects
give at most J+1 distinct difficulties (2PL orders more finely); the crowd's own training rows
(the ``sample_size`` lowest id hashes, seed 42) look easier than they are; a row with no scored
token gets no answers, so its b is the prior's 0.

A crowd's per-row difficulty and discrimination need no target, so they are the stored features
(kind ``irt``, two float32 per row): a second run on the same pool and settings loads no crowd.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import filesystems
from ..irt import MODELS, fit_irt, fit_items, loss_answers
from ..models.cache import cache_root, content_hash
from ..models.embedder import model_record, open_embedder
from ..models.features import model_identity
from ..models.heads import cached_heads, head_from_state, label_indices, load_heads
from ..models.lm import encode_for_model, load_causal_lm
from ..models.proxies import ProxySpec, obtain_proxy
from ..models.records import DATA_KINDS, data_kind, record_label, render
from ..models.stats import mean_token_loss
from ..schemas.proxy import TrainConfig
from .base import Prepared, RunContext, Selector
from .rules import SkipWindow, TopK

# The calibration sample is drawn with its own hash seed, unlike the crowd's training slice.
CALIBRATION_SEED = 1
IRT_PRIORS = ("normal", "vague")
VAGUE_SD = 1000.0  # py-irt 0.7's vague 1PL prior on b: N(0, 1e3^2)


@dataclass(frozen=True)
class IRTPrepared(Prepared):
    source: str  # "crowd" or "responses"
    irt_model: str
    stage_edges: list[float]  # difficulty quantiles that bound the curriculum stages
    # A crowd: what it is (LM checkpoints or classifier heads), the abilities and the threshold.
    data_kind: str | None = None
    subjects: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    heads: str | None = None
    key: str | None = None
    theta: list[float] = field(default_factory=list)
    se_theta: list[float] = field(default_factory=list)
    loss_threshold: float | None = None
    calibration: dict = field(default_factory=dict)
    crowd_train_rows: int = 0
    # A response file: where its fitted items are.
    responses: str | None = None
    responses_sha256: str | None = None
    items_path: str | None = None
    n_subjects: int = 0
    n_items: int = 0
    converged: bool | None = None
    mean_correct: float | None = None


class IRTSelector(Selector):
    """Score = IRT difficulty from a crowd of proxies or classifiers (or a user's response file)."""

    name = "irt"
    needs_target = False
    prepared_type = IRTPrepared
    default_budget = 0.5

    def __init__(self, responses: str | None = None, irt_model: str = "1pl", n_stages: int = 4,
                 prior_sd: float = 1.0, irt_prior: str = "normal", data_kind: str = "auto", calibration_size: int = 2000,
                 sample_size: int = 5000, crowd_widths: tuple[int, ...] = (32, 64), crowd_checkpoints: int = 8,
                 proxy_epochs: int = 2, lr: float = 1e-3, batch_size: int = 32, n_layer: int = 2, n_head: int = 2,
                 vocab_size: int = 2048, positions: int = 256, loss_threshold: float | None = None,
                 embedder: str = "minilm", pooling: str = "mean", head_sizes: tuple[int, ...] = (0, 32, 128, 512),
                 head_epochs: tuple[int, ...] = (1, 2, 4, 8), head_lr: float = 1e-3, head_batch_size: int = 64,
                 skip_hardest: float = 0.0, model: str | None = None, crowd_lr: float = 1e-4,
                 crowd_lora_r: int = 8, trust_remote_code: bool = False):
        self.responses = responses  # Parquet/JSONL of (subject, item, correct); None: build a crowd
        self.irt_model = irt_model  # "1pl" (Rasch, as PUDF) or "2pl"
        self.n_stages = n_stages  # curriculum stages: quantile bins of difficulty
        self.prior_sd = prior_sd  # sd of the N(0, sd^2) priors on b and log a (theta's is N(0, 1))
        # "normal": b ~ N(0, prior_sd^2); "vague": py-irt's 1PL vague prior, b ~ N(0, 1000^2), under
        # which b follows the answers almost alone (a wider spread of b for a small crowd)
        self.irt_prior = irt_prior
        self.data_kind = data_kind  # "auto": classifiers when every sampled record has a label, else LMs
        self.calibration_size = calibration_size  # pool rows the abilities are fitted on
        self.sample_size = sample_size  # pool rows the crowd trains on
        self.crowd_widths = crowd_widths  # LM crowd: one proxy trained from scratch per width (n_embd)
        self.crowd_checkpoints = crowd_checkpoints  # LM crowd: subjects per width, spread over its training
        self.proxy_epochs = proxy_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.vocab_size = vocab_size
        self.positions = positions
        self.loss_threshold = loss_threshold  # LM crowd: right when mean token loss is under it; None: median
        self.embedder = embedder  # classifier crowd: features of each record's text
        self.pooling = pooling
        self.head_sizes = head_sizes  # classifier crowd: hidden units (0: softmax regression)
        self.head_epochs = head_epochs  # classifier crowd: training lengths
        self.head_lr = head_lr
        self.head_batch_size = head_batch_size
        self.skip_hardest = skip_hardest  # fraction of the hardest rows left out before the top-k
        # LM crowd from a pretrained model (HF id or folder): the model itself plus the checkpoints of
        # one short LoRA fine-tune on the pool sample (rank crowd_lora_r, lr crowd_lr, proxy_epochs
        # passes, crowd_checkpoints checkpoints); None builds the from-scratch crowd of crowd_widths
        self.model = model
        self.crowd_lr = crowd_lr
        self.crowd_lora_r = crowd_lora_r
        self.trust_remote_code = trust_remote_code
        if str(irt_model).lower() not in MODELS:
            raise ValueError(f"irt_model must be one of {MODELS}, got {irt_model!r}")
        if data_kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be one of {DATA_KINDS}, got {data_kind!r}")
        if irt_prior not in IRT_PRIORS:
            raise ValueError(f"irt_prior must be one of {', '.join(IRT_PRIORS)}, got {irt_prior!r}")
        if irt_prior == "vague" and str(irt_model).lower() != "1pl":
            raise ValueError("irt_prior='vague' is py-irt's 1PL prior; with irt_model='2pl' set prior_sd instead")
        if n_stages < 1:
            raise ValueError(f"n_stages must be at least 1, got {n_stages}")
        if not 0 <= skip_hardest < 1:
            raise ValueError(f"skip_hardest must be in [0, 1), got {skip_hardest}")
        if not crowd_widths or crowd_checkpoints < 1 or crowd_checkpoints % proxy_epochs:
            raise ValueError("the LM crowd needs a width, and crowd_checkpoints must be a positive multiple of "
                             f"proxy_epochs (got {crowd_checkpoints} and {proxy_epochs})")
        if not head_sizes or not head_epochs:
            raise ValueError("the classifier crowd needs at least one head size and one training length")

    @classmethod
    def test_params(cls) -> dict:
        return {"calibration_size": 60, "sample_size": 120, "crowd_widths": (16,), "crowd_checkpoints": 4,
                "proxy_epochs": 1, "lr": 5e-3, "batch_size": 16, "n_layer": 1, "vocab_size": 300, "positions": 64,
                "head_sizes": (0, 8), "head_epochs": (1, 3)}

    def b_prior_sd(self) -> float:
        """The sd of the prior on b that the fits use."""
        return VAGUE_SD if self.irt_prior == "vague" else float(self.prior_sd)

    # -- declared output ----------------------------------------------------------------------
    def columns(self, tasks: list[str]) -> list[pa.Field]:
        return super().columns(tasks) + [pa.field("difficulty", pa.float32()), pa.field("discrimination", pa.float32()),
                                         pa.field("curriculum_stage", pa.int32())]

    def selection_rule(self) -> TopK:
        """The top scores after the offset window: the hardest ``skip_hardest`` left out."""
        return TopK(skip=SkipWindow(self.skip_hardest))

    # -- prepare: once per run ------------------------------------------------------------------
    def prepare(self, pool, targets, context: RunContext) -> IRTPrepared:
        if self.responses is not None:
            self.prepared_ = self._prepare_from_file()
            return self.prepared_
        sample = pool.sample(1.0, self.sample_size)
        kind = data_kind(self.data_kind, [record_label(r) for r in sample])
        crowd_info = self._train_heads(sample, context) if kind == "classification" else self._train_lms(sample, context)
        seen = {r["id"] for r in sample}
        candidates = pool.sample(1.0, self.calibration_size + len(seen), seed=CALIBRATION_SEED)
        calibration = [r for r in candidates if r["id"] not in seen][: self.calibration_size]
        if len(calibration) < 2:
            raise ValueError(f"irt: only {len(calibration)} pool rows outside the crowd's training sample to "
                             "calibrate on; lower sample_size or use a larger pool")
        crowd = self._crowd(kind, crowd_info, context)
        threshold = self.loss_threshold
        if kind == "lm":
            losses = crowd.losses(calibration)
            if threshold is None:
                judged = losses[:, np.isfinite(losses).all(0)]
                threshold = float(np.median(judged)) if judged.size else 0.0
            responses = loss_answers(losses, threshold)
        else:
            responses = crowd.answers(calibration)
        fit = fit_irt(responses, model=self.irt_model, prior_sd=self.b_prior_sd(), device="cpu")
        self.prepared_ = IRTPrepared(
            source="crowd", data_kind=kind, irt_model=self.irt_model, **crowd_info,
            theta=fit.theta.tolist(), se_theta=fit.se_theta.tolist(), loss_threshold=threshold,
            stage_edges=stage_edges(fit.b, self.n_stages),
            calibration={"rows": len(calibration), "mean_correct": float(np.nanmean(responses)),
                         **crowd_spread(responses), "converged": fit.converged, "iterations": fit.iterations,
                         "difficulty_quantiles": np.quantile(fit.b, [0, 0.25, 0.5, 0.75, 1]).tolist()},
            crowd_train_rows=len(sample),
        )
        return self.prepared_

    def _train_lms(self, sample: list[dict], context: RunContext) -> dict:
        """One from-scratch training run per width, with ``crowd_checkpoints`` checkpoints each; a
        checkpoint is one subject. With ``model``: the pretrained model, then its LoRA checkpoints."""
        if self.model is not None:
            return self._tune_pretrained(sample, context)
        subjects, runs = [], []
        for width in self.crowd_widths:
            spec = ProxySpec(epochs=self.proxy_epochs, batch_size=self.batch_size, lr=self.lr, n_layer=self.n_layer,
                             n_embd=int(width), n_head=self.n_head, vocab_size=self.vocab_size,
                             positions=self.positions, sample_size=self.sample_size,
                             checkpoints_per_epoch=self.crowd_checkpoints // self.proxy_epochs)
            run = obtain_proxy(spec, sample, seed=context.seed, max_length=context.max_length, device=context.device,
                               progress=sys.stderr.isatty())
            subjects += [{"path": str(c.path), "width": int(width), "step": c.step} for c in run.checkpoints]
            runs.append({"width": int(width), "path": str(run.path), "key": run.key, "checkpoints": len(run.checkpoints)})
        return {"subjects": subjects, "runs": runs}

    def _tune_pretrained(self, sample: list[dict], context: RunContext) -> dict:
        """The pretrained crowd: ``model`` as it is (step 0), then each checkpoint of one short LoRA
        fine-tune on the crowd's sample. PUDF's crowd is likewise one pretrained model tuned for
        varied lengths (1/3/5 epochs); here the lengths are the checkpoints of a single run."""
        from ..models.train import train_proxy

        config = TrainConfig(mode="lora", fraction=1.0, seed=context.seed, epochs=self.proxy_epochs,
                             batch_size=self.batch_size, lr=self.crowd_lr, lora_r=self.crowd_lora_r,
                             lora_alpha=2.0 * self.crowd_lora_r, max_length=context.max_length, dtype=context.dtype,
                             checkpoints_per_epoch=self.crowd_checkpoints // self.proxy_epochs)
        run = train_proxy(self.model, sample, config, device=context.device, progress=sys.stderr.isatty(),
                          trust_remote_code=self.trust_remote_code)
        subjects = [{"base": run.base, "adapter": None, "step": 0}]
        subjects += [{"base": run.base, "adapter": str(c.path), "step": c.step} for c in run.checkpoints]
        return {"subjects": subjects, "runs": [{"model": self.model, "path": str(run.path), "key": run.key,
                                                "checkpoints": len(run.checkpoints), "lora_r": self.crowd_lora_r,
                                                "lr": self.crowd_lr}]}

    def _train_heads(self, sample: list[dict], context: RunContext) -> dict:
        """One head per (size, training length) on frozen embeddings of the labelled sample."""
        kept = [(r, record_label(r)) for r in sample]
        kept = [(r, v) for r, v in kept if v is not None]
        if not kept:
            raise ValueError("irt: data_kind='classification' but no sampled record has a label in extra")
        grid = [(int(h), int(e)) for h in self.head_sizes for e in self.head_epochs]
        path, key = cached_heads("irt-heads", kept, self._embedder(context).embed, embedder=self.embedder,
                                 pooling=self.pooling, max_length=context.max_length, grid=grid, lr=self.head_lr,
                                 batch_size=self.head_batch_size, seed=context.seed)
        return {"subjects": [{"hidden": h, "epochs": e} for h, e in grid], "heads": path, "key": key}

    def _embedder(self, context: RunContext):
        return open_embedder(self.embedder, pooling=self.pooling, max_length=context.max_length,
                             batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                             trust_remote_code=self.trust_remote_code)

    def _crowd(self, kind: str, info: dict, context: RunContext):
        if kind == "classification":
            return _HeadCrowd(info["heads"], self._embedder(context))
        if info["subjects"] and "adapter" in info["subjects"][0]:
            return _AdapterCrowd(info["subjects"], context, self.trust_remote_code)
        return _LMCrowd([s["path"] for s in info["subjects"]], context)

    def _prepare_from_file(self) -> IRTPrepared:
        raw = filesystems.read_bytes(self.responses, decompress=True)
        digest = hashlib.sha256(raw).hexdigest()
        matrix, subjects, items = response_matrix(read_responses(raw, self.responses))
        fit = fit_irt(matrix, model=self.irt_model, prior_sd=self.b_prior_sd(), device="cpu")
        key = content_hash({"responses_sha256": digest, "irt_model": self.irt_model, "prior_sd": self.b_prior_sd()})
        folder = cache_root().parent / "irt"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"items-{key[:16]}.parquet"
        table = pa.table({"item": pa.array(items, pa.string()), "difficulty": fit.b, "discrimination": fit.a,
                          "se_difficulty": fit.se_b, "se_discrimination": fit.se_a})
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return IRTPrepared(source="responses", irt_model=self.irt_model, responses=self.responses,
                           responses_sha256=digest, items_path=str(path), n_subjects=len(subjects),
                           n_items=len(items), stage_edges=stage_edges(fit.b, self.n_stages),
                           converged=fit.converged, mean_correct=float(np.nanmean(matrix)))

    # -- per worker ------------------------------------------------------------------------------
    def setup(self, context: RunContext, prepared=None, targets=None) -> None:
        super().setup(context, prepared, targets)
        if prepared is None:
            raise ValueError("irt: nothing prepared (run prepare() first: it builds the crowd)")
        self.spec_ = None
        self.edges_ = np.asarray(prepared.stage_edges, dtype=np.float64)
        if prepared.source == "responses":
            table = pq.read_table(prepared.items_path)
            self.items_ = dict(zip(table.column("item").to_pylist(),
                                   zip(table.column("difficulty").to_pylist(), table.column("discrimination").to_pylist())))
        else:
            self.theta_ = np.asarray(prepared.theta, dtype=np.float64)
            self.crowd_ = None  # loaded at the first batch the feature store lacks

    def answers(self, records: list[dict]) -> np.ndarray:
        """The crowd's 1/0 answers on ``records``: [subjects, records], NaN where there is none."""
        if self.crowd_ is None:
            self.crowd_ = self._crowd(self.prepared_.data_kind, self.prepared_.to_json(), self.context_)
        if self.prepared_.data_kind == "classification":
            return self.crowd_.answers(records)
        return loss_answers(self.crowd_.losses(records), self.prepared_.loss_threshold)

    def feature_spec(self) -> dict | None:
        """A crowd's fitted item parameters (kind ``irt``): they need no target. A response file
        is looked up by id, nothing to store (None)."""
        prepared = self.prepared_
        if prepared.source != "crowd":
            return None
        if getattr(self, "spec_", None) is None:
            crowd = [{k: v for k, v in run.items() if k not in ("path", "model")} for run in prepared.runs]
            self.spec_ = {"kind": "irt", "data_kind": prepared.data_kind, "irt_model": self.irt_model,
                          "b_prior_sd": self.b_prior_sd(), "crowd": crowd, "heads": prepared.key,
                          "subjects": len(prepared.subjects), "theta": content_hash(prepared.theta),
                          "loss_threshold": prepared.loss_threshold, "max_length": self.context_.max_length,
                          "dtype": self.context_.dtype}
            if prepared.data_kind == "classification":
                self.spec_.update(embedder=model_identity(self.embedder), pooling=self.pooling)
        return self.spec_

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        if not records:
            return {"difficulty": np.zeros(0), "discrimination": np.zeros(0)}
        fit = fit_items(self.answers(records), self.theta_, model=self.irt_model, prior_sd=self.b_prior_sd())
        return {"difficulty": fit.b, "discrimination": fit.a}

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        if self.prepared_.source != "responses":
            return super().score(records)
        found = [self.items_.get(r["id"]) for r in records]
        b = np.array([f[0] if f else np.nan for f in found], dtype=np.float64)
        a = np.array([f[1] if f else np.nan for f in found], dtype=np.float64)
        return self.score_features({"difficulty": b, "discrimination": a}, records)

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        b, a = features["difficulty"], features["discrimination"]
        stage = np.where(np.isnan(b), -1, curriculum_stage(b, self.edges_)).astype(np.int32)
        return {self.score_columns([])[None]: b.astype(np.float32), "difficulty": b.astype(np.float32),
                "discrimination": a.astype(np.float32), "curriculum_stage": stage}

    def model_info(self) -> dict[str, dict]:
        prepared = getattr(self, "prepared_", None) or IRTPrepared("", self.irt_model, [])  # before prepare: empty
        if self.responses is not None:
            return {"irt.responses": {"path": self.responses, "sha256": prepared.responses_sha256}}
        if prepared.data_kind == "classification":
            crowd = getattr(self, "crowd_", None)
            loaded = crowd.embedder.path if isinstance(crowd, _HeadCrowd) else None
            return {"irt.embedder": model_record(self.embedder, loaded, pooling=self.pooling),
                    "irt.heads": {"path": prepared.heads, "key": prepared.key}}
        if self.model is not None:  # the pretrained crowd: one LoRA run
            return {"irt.crowd": dict(run) for run in prepared.runs}
        return {f"irt.crowd.w{run['width']}": run for run in prepared.runs}


# -- helpers ------------------------------------------------------------------------------------
def stage_edges(b: np.ndarray, n_stages: int) -> list[float]:
    """Inner quantile edges of the difficulties (n_stages - 1 of them, ascending)."""
    b = np.asarray(b, dtype=np.float64)
    b = b[np.isfinite(b)]
    if n_stages <= 1 or not b.size:
        return []
    return np.quantile(b, np.arange(1, n_stages) / n_stages).tolist()


def curriculum_stage(b: np.ndarray, edges) -> np.ndarray:
    """Stage s holds edges[s-1] < b <= edges[s]: the number of edges below b. Ties with an edge
    (1PL difficulties are discrete) go to the lower stage. b is read as the float32 the shards
    store, with a 1e-6 tolerance, so the stored difficulty and the manifest's edges give back the
    stored stage, and a joint fit and a per-item refit of the same answers agree."""
    b32 = np.asarray(b, dtype=np.float32).astype(np.float64)
    return np.searchsorted(np.asarray(edges, dtype=np.float64), b32 - 1e-6, side="left")


def crowd_spread(responses: np.ndarray) -> dict:
    """How informative a crowd is on the calibration rows: each subject's share of right answers,
    and how many subjects answer every row alike. Such a subject says nothing about which rows are
    harder (under 1PL the items' order depends only on their counts of right answers, which such
    a subject raises for every item or for none), so a crowd with many has few distinct
    difficulties: checkpoints taken too early answer everything wrong."""
    answered = np.isfinite(responses)
    count = answered.sum(1)
    share = np.where(answered, responses, 0.0).sum(1) / np.maximum(count, 1)
    share = np.where(count > 0, share, np.nan)  # a subject with no answers is neither
    return {"subject_correct": [float(v) for v in share],
            "subjects_all_wrong": int(np.sum(share == 0.0)), "subjects_all_right": int(np.sum(share == 1.0))}


class _LMCrowd:
    """The LM crowd's checkpoints, loaded once per worker; scores records by mean token loss."""

    def __init__(self, paths: list[str], context: RunContext):
        self.context = context
        self.groups: list[tuple[object, list[int], list]] = []  # per training run: tokenizer, rows, models
        by_run: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            by_run.setdefault(str(Path(path).parent), []).append(i)
        for rows in by_run.values():
            loaded = [load_causal_lm(paths[i], device=context.device, dtype=context.dtype) for i in rows]
            self.groups.append((loaded[0][1], rows, [m for m, _ in loaded]))
        self.n_subjects = len(paths)

    def losses(self, records: list[dict]) -> np.ndarray:
        """Mean token loss over each record's scored tokens, [subjects, records] (NaN: none scored)."""
        out = np.full((self.n_subjects, len(records)), np.nan)
        for tokenizer, rows, models in self.groups:  # one tokenizer and shape per run: encode once
            examples = encode_for_model(models[0], tokenizer, records, self.context.max_length)
            for row, model in zip(rows, models):
                out[row] = mean_token_loss(model, examples, batch_tokens=self.context.batch_tokens)
        return out


class _AdapterCrowd:
    """A pretrained crowd: one base model, its LoRA checkpoints swapped in one after another
    (subjects with ``adapter`` None are the base model, adapters off). One copy of the base in memory."""

    def __init__(self, subjects: list[dict], context: RunContext, trust_remote_code: bool = False):
        from safetensors.torch import load_file

        self.context = context
        adapters = [s["adapter"] for s in subjects]
        first = next((a for a in adapters if a), None)
        self.model, self.tokenizer = load_causal_lm(subjects[0]["base"], device=context.device, dtype=context.dtype,
                                                    trust_remote_code=trust_remote_code, adapter=first)
        self.states = [load_file(str(Path(a) / "adapter_model.safetensors")) if a else None for a in adapters]
        self.n_subjects = len(subjects)

    def losses(self, records: list[dict]) -> np.ndarray:
        """Mean token loss over each record's scored tokens, [subjects, records] (NaN: none scored)."""
        import contextlib

        from peft import set_peft_model_state_dict

        out = np.full((self.n_subjects, len(records)), np.nan)
        examples = encode_for_model(self.model, self.tokenizer, records, self.context.max_length)
        for row, state in enumerate(self.states):
            if state is not None:
                set_peft_model_state_dict(self.model, state)
            off = self.model.disable_adapter() if state is None and hasattr(self.model, "disable_adapter") \
                else contextlib.nullcontext()
            with off:
                out[row] = mean_token_loss(self.model, examples, batch_tokens=self.context.batch_tokens)
        return out


class _HeadCrowd:
    """The classifier crowd: heads on frozen embeddings; right when the predicted class is the label."""

    def __init__(self, path: str, embedder):
        states, self.classes = load_heads(path)
        self.embedder = embedder
        self.heads = [head_from_state(state) for state in states]

    def answers(self, records: list[dict]) -> np.ndarray:
        import torch

        y = label_indices([record_label(r) for r in records], self.classes)
        x = torch.as_tensor(np.asarray(self.embedder.embed([render(r) for r in records]), dtype=np.float32))
        out = np.full((len(self.heads), len(records)), np.nan)
        with torch.no_grad():
            for j, head in enumerate(self.heads):
                predicted = head(x).argmax(-1).numpy()
                out[j] = np.where(y >= 0, (predicted == y).astype(np.float64), np.nan)
        return out


def read_responses(raw: bytes, name: str) -> pa.Table:
    """A (subject, item, correct) table from Parquet or JSONL bytes (JSONL may be gzipped)."""
    if raw[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(raw))
    else:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        rows = []
        for n, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}:{n}: invalid JSON ({e.msg})") from None
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
    missing = {"subject", "item", "correct"} - set(table.column_names)
    if missing:
        raise ValueError(f"{name}: a responses file needs columns subject, item, correct "
                         f"(missing: {', '.join(sorted(missing))})")
    return table


def response_matrix(table: pa.Table) -> tuple[np.ndarray, list[str], list[str]]:
    """[subjects, items] answers (NaN where missing; repeated pairs averaged, a soft answer),
    and the sorted subject and item names."""
    subject = np.array([str(s) for s in table.column("subject").to_pylist()], dtype=object)
    item = np.array([str(i) for i in table.column("item").to_pylist()], dtype=object)
    correct = np.array([float(c) if c is not None else np.nan for c in table.column("correct").to_pylist()])
    keep = np.isfinite(correct)
    if not keep.any():
        raise ValueError("the responses file holds no answers")
    if ((correct[keep] < 0) | (correct[keep] > 1)).any():
        raise ValueError("correct must be true/false or a number in [0, 1]")
    subjects, s_idx = np.unique(subject[keep], return_inverse=True)
    items, i_idx = np.unique(item[keep], return_inverse=True)
    total = np.zeros((len(subjects), len(items)))
    count = np.zeros_like(total)
    np.add.at(total, (s_idx, i_idx), correct[keep])
    np.add.at(count, (s_idx, i_idx), 1.0)
    matrix = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return matrix, [str(s) for s in subjects], [str(i) for i in items]


__all__ = [
    "IRTSelector",
    "crowd_spread",
    "curriculum_stage",
    "read_responses",
    "response_matrix",
    "stage_edges",
]
