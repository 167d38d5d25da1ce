"""LESS (Xia et al., ICML 2024): keep the examples whose gradient points where the targets' does.

1. Warm-up: LoRA on a small random slice of the pool (5 %, 4 epochs, a checkpoint per epoch),
   saving each checkpoint's Adam moments and its epoch's average learning rate.
2. Features, per checkpoint: each pool example's LoRA gradient turned into the Adam update it
   would cause (m' / sqrt(v' + eps), the checkpoint's moments), each target example's plain
   gradient; both randomly projected (Rademacher, seeded so every worker agrees; fp32, or bf16
   with ``proj_dtype``) and
   L2-normalized. Normalizing matters: with a per-token mean loss, short examples have larger
   gradients, and an inner product would favour them.
3. Score, per task: the cosines summed over checkpoints with weights w_i (average learning
   rates, normalized to 1), averaged over each subtask's targets, then the best subtask:
   max_j mean_{t in subtask j} sum_i w_i cos(pool_i, t_i). (The reference code sums over
   checkpoints before the max, as here; with one subtask the order does not matter.)

Pool features are the costly part, so they are the selector's stored features (kind
``less-grads``: every checkpoint's [rows, proj_dim] gradients), keyed by (proxy, checkpoints, the
chunk's rows, length limit, projection): selecting for a new task computes only the targets'
gradients, and a killed run resumes from the chunks it finished.

Memory does not grow with the parameter count times the projection size: per-example gradients
too large for ``block_mb`` stream through the projection a weight at a time, and the projection
is regenerated a tile at a time (README, "LESS's memory", has the formula and measurements).

Two sizes. ``preset="paper"`` is the paper's recipe (LoRA r=128, alpha=512, lr 2e-5, projection
to 8192), the default when ``model`` names a real LM. ``preset="small"`` is the default for the
proxy tamis builds from the pool (2 layers x 64, LoRA r=8 on the attention projections, lr 1e-3,
projection to 1024): 30k examples go through in well under half an hour on 2 CPU cores.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace

import numpy as np

from ..models.lm import encode_for_model
from ..models.proxies import ProxySpec, obtain_proxy
from ..models.train import train_proxy
from ..schemas.proxy import TrainConfig
from .base import PoolSample, Prepared, RunContext, Selector

log = logging.getLogger("tamis.selectors")

# Values that ``None`` parameters take, by preset.
PRESETS = {
    "paper": {"lora_r": 128, "lora_alpha": 512.0, "lr": 2e-5, "proj_dim": 8192},
    "small": {"lora_r": 8, "lora_alpha": 32.0, "lr": 1e-3, "proj_dim": 1024},
}


@dataclass(frozen=True)
class LessPrepared(Prepared):
    proxy: str  # the warmed-up proxy's folder
    key: str  # its cache key (the feature store keys on it)
    weights: list[float]  # per checkpoint: its share of the warm-up's learning rate
    checkpoints: list[int]
    preset: str  # the effective LoRA and projection settings
    lora_r: int
    lora_alpha: float
    lr: float
    proj_dim: int
    max_length: int  # tokens per example in the warm-up, and so in every worker's gradients
    base: str | None = None  # the model the LoRA checkpoints apply to (a built proxy's folder, or `model`)


class LessSelector(Selector):
    """Score = weighted cosine of Adam-preconditioned pool gradients to target gradients (higher is better)."""

    name = "less"
    needs_target = True
    prepared_type = LessPrepared

    def __init__(self, model: str | None = None, preset: str | None = None,
                 lora_r: int | None = None, lora_alpha: float | None = None, lora_dropout: float = 0.1,
                 lr: float | None = None, proj_dim: int | None = None, proj_seed: int = 0,
                 proj_dtype: str = "float32",
                 fraction: float = 0.05, max_warmup_examples: int | None = None, epochs: int = 4,
                 batch_size: int = 32, sample_size: int = 10_000, build_epochs: int = 2,
                 n_layer: int = 2, n_embd: int = 64, n_head: int = 2, vocab_size: int = 2048, positions: int = 256,
                 chunk_size: int = 16, block_mb: float = 256, feature_store: str | None = None,
                 max_length: int | None = None, warmup_loss: str = "example", trust_remote_code: bool = False):
        self.model = model  # HF id or folder to warm up; None builds a small GPT-2 from the pool first
        self.preset = preset  # "paper" or "small"; None: "paper" for a given model, "small" for a built one
        # LoRA warm-up and projection; None takes the preset's value.
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lr = lr
        self.proj_dim = proj_dim
        self.proj_seed = proj_seed  # every worker rebuilds the same projection from it
        # "bfloat16" projects 1.5-1.9x faster on a 2-core CPU (more on a GPU) and buffers twice the
        # rows in the same memory, each vector within about 2**-9 relative of fp32's (LESS's code
        # casts to fp16 before projecting); its features are stored apart from fp32's
        self.proj_dtype = proj_dtype
        self.fraction = fraction  # of the pool, drawn by id hash, for the warm-up
        self.max_warmup_examples = max_warmup_examples
        self.epochs = epochs  # one checkpoint per epoch; each adds a pass over the pool for features
        self.batch_size = batch_size
        # The proxy built when no model is given: trained on ``sample_size`` pool rows for
        # ``build_epochs`` with the toolkit's build recipe (ProxySpec's batch size and learning rate).
        # With CoLoR-Filter's default shape and recipe the two specs are equal, so one build serves both.
        self.sample_size = sample_size
        self.build_epochs = build_epochs
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.n_head = n_head
        self.vocab_size = vocab_size
        self.positions = positions
        self.chunk_size = chunk_size  # examples per batched gradient pass
        # What featurization may hold besides the model, the chunk's activations and its [chunk,
        # proj_dim] result: whole gradients of as many rows as fit (they then share each regenerated
        # projection tile, which is what a CPU pays for), else one block of a chunk's gradients and
        # of the projection (README, "LESS's memory": raising it trades memory for speed).
        self.block_mb = block_mb
        self.feature_store = feature_store  # folder or URL; None: the run's --feature-store
        # Tokens per example for warm-up and gradients; None: the run's --max-length (512). LESS uses 2048.
        self.max_length = max_length
        # "example": each example's token mean weighs the same in a step (LESS: batch 1 x 32 accumulation);
        # "token": the mean over all the step's tokens (tamis's other trainings)
        self.warmup_loss = warmup_loss
        self.trust_remote_code = trust_remote_code
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if proj_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"proj_dtype must be 'float32' or 'bfloat16', got {proj_dtype!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        if not block_mb > 0:
            raise ValueError(f"block_mb must be > 0, got {block_mb!r}")
        if warmup_loss not in ("example", "token"):
            raise ValueError(f"warmup_loss must be 'example' or 'token', got {warmup_loss!r}")
        if max_length is not None and max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length!r}")

    @classmethod
    def test_params(cls) -> dict:
        return {"lora_r": 2, "lora_alpha": 8.0, "proj_dim": 32, "fraction": 0.5, "epochs": 2, "batch_size": 8,
                "sample_size": 120, "build_epochs": 1, "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 300,
                "positions": 64}

    def settings(self) -> dict:
        """The effective LoRA and projection values: explicit parameters over the preset's."""
        preset = self.preset or ("paper" if self.model is not None else "small")
        chosen = {k: getattr(self, k) for k in PRESETS[preset]}
        return {"preset": preset, **{k: PRESETS[preset][k] if v is None else v for k, v in chosen.items()}}

    # -- warm-up (once per run, on the driver) ------------------------------------------------------
    def build_spec(self) -> ProxySpec:
        """The small GPT-2 built from the pool when no ``model`` is given (LoRA then warms it up)."""
        return ProxySpec(epochs=self.build_epochs, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                         vocab_size=self.vocab_size, positions=self.positions, sample_size=self.sample_size)

    def own_context(self, context: RunContext) -> RunContext:
        """The run's context with LESS's own ``max_length`` when one is given."""
        return context if self.max_length is None else replace(context, max_length=self.max_length)

    def warmup_config(self, context: RunContext) -> TrainConfig:
        """LESS's warm-up: LoRA on the pool slice, with the run's ``--dtype`` as the autocast dtype
        (LESS trains in bf16; weights and Adam moments stay fp32 either way). A forward holds at
        most as many padded tokens as a featurization pass can (``chunk_size`` rows, at most 256
        tokens each on average), so ``chunk_size`` bounds the activations of both phases: a step
        of 32 rows used to go through whole, 4,096 tokens of 128 or 8,192 of 2,048, 14 GB and 25 GB
        on a 135M model."""
        s = self.settings()
        return TrainConfig(mode="lora", fraction=self.fraction, max_examples=self.max_warmup_examples,
                           micro_batch_tokens=self.chunk_size * min(context.max_length, 256),
                           seed=context.seed, epochs=self.epochs, batch_size=self.batch_size, lr=s["lr"],
                           lora_r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=self.lora_dropout,
                           max_length=context.max_length, dtype=context.dtype, loss_weighting=self.warmup_loss)

    def prepare(self, pool: PoolSample, targets, context: RunContext) -> LessPrepared:
        if not targets:
            raise ValueError(f"selector {self.name!r} needs --target")
        context = self.own_context(context)
        progress = sys.stderr.isatty()
        start = self.model
        if start is None:
            start = obtain_proxy(self.build_spec(), pool.sample(1.0, self.sample_size), seed=context.seed,
                                 max_length=context.max_length, device=context.device, progress=progress)
        warm = train_proxy(start, iter(pool), self.warmup_config(context), device=context.device, progress=progress,
                           trust_remote_code=self.trust_remote_code)
        if not warm.complete:
            raise RuntimeError(f"less: warm-up at {warm.path} did not finish")
        self.prepared_ = LessPrepared(proxy=str(warm.path), key=warm.key, weights=warm.lr_weights(),
                                      checkpoints=[c.index for c in warm.checkpoints], base=warm.base,
                                      **self.settings(), max_length=context.max_length)
        return self.prepared_

    # -- features and scores (per worker) -----------------------------------------------------------
    def setup(self, context: RunContext, prepared=None, targets=None) -> None:
        from ..models.projection import DEFAULT_TILE_ROWS, RademacherProjector
        from ..models.stats import grad_dim
        from ..models.train import TrainedProxy

        if prepared is not None:  # the warm-up's max_length, whatever this worker's run context says
            context = replace(context, max_length=prepared.max_length)
        super().setup(context, prepared, targets)
        if prepared is None:
            raise ValueError("less: nothing prepared (run prepare() first: it trains the warm-up proxy)")
        self.proxy_ = TrainedProxy.open(prepared.proxy, base=prepared.base)
        self.model_, self.tokenizer_ = self.proxy_.load(0, device=self.context_.device, dtype=self.context_.dtype,
                                                        trainable=True)
        self.loaded_checkpoint_ = 0
        self.checkpoint_states_ = {}
        self.weights_ = np.asarray(prepared.weights, dtype=np.float64)
        proj_dim = prepared.proj_dim
        # The whole matrix is kept only when it fits the block budget, and a tile never exceeds it.
        self.projector_ = RademacherProjector(grad_dim(self.model_), proj_dim, seed=self.proj_seed,
                                              device=self.context_.device, cache_bytes=self.block_bytes,
                                              dtype=self.proj_dtype,
                                              tile_rows=max(1, min(DEFAULT_TILE_ROWS, self.block_bytes // (4 * proj_dim))))
        # Per task: target features per checkpoint [m, d] and the row indices of each subtask.
        self.targets_ = {}
        for task in self.tasks_:
            examples = encode_for_model(self.model_, self.tokenizer_, targets[task], self.context_.max_length)
            usable = [i for i, e in enumerate(examples) if e.n_scored > 0]
            if not usable:
                raise ValueError(f"less: no target example of task {task!r} has a token to score")
            groups: dict[str, list[int]] = {}
            for j, i in enumerate(usable):
                groups.setdefault(targets[task][i].get("subtask") or "", []).append(j)
            feats = [self.features([examples[i] for i in usable], ckpt, adam=False)
                     for ckpt in range(len(self.proxy_.checkpoints))]
            self.targets_[task] = (feats, [np.asarray(groups[k]) for k in sorted(groups)])

    @property
    def block_bytes(self) -> int:
        return int(self.block_mb * (1 << 20))

    def checkpoint_state(self, ckpt: int) -> tuple[dict, dict]:
        """(LoRA weights, Adam moments) of checkpoint ``ckpt``. Every chunk visits every
        checkpoint, so all checkpoints' states stay in memory when together they fit the block
        budget (read from disk once per worker); larger ones (3 x the LoRA size each) are kept
        one at a time and read again when a chunk comes back to them."""
        from safetensors.torch import load_file

        if ckpt not in self.checkpoint_states_:
            checkpoint = self.proxy_.checkpoints[ckpt]
            state = (load_file(str(checkpoint.path / "adapter_model.safetensors")), checkpoint.adam_moments())
            size = sum(t.numel() * t.element_size() for t in state[0].values())
            size += sum(t.numel() * t.element_size() for pair in state[1].values() for t in pair)
            if size * len(self.proxy_.checkpoints) > self.block_bytes:
                self.checkpoint_states_.clear()
            self.checkpoint_states_[ckpt] = state
        return self.checkpoint_states_[ckpt]

    def use_checkpoint(self, ckpt: int) -> None:
        """Load checkpoint ``ckpt``'s LoRA weights into the worker's one model."""
        from peft import set_peft_model_state_dict

        if getattr(self, "loaded_checkpoint_", 0) == ckpt:
            return
        set_peft_model_state_dict(self.model_, self.checkpoint_state(ckpt)[0])
        self.loaded_checkpoint_ = ckpt

    def features(self, examples, ckpt: int, adam: bool) -> np.ndarray:
        """Projected, normalized gradients [N, d] at checkpoint ``ckpt`` (Adam-preconditioned when ``adam``)."""
        from ..models.stats import per_example_grads

        self.use_checkpoint(ckpt)
        moments = self.checkpoint_state(ckpt)[1] if adam else None
        return per_example_grads(self.model_, examples, adam_moments=moments, projector=self.projector_,
                                 normalize=True, chunk_size=self.chunk_size, block_bytes=self.block_bytes,
                                 batch_tokens=min(self.context_.batch_tokens, 256 * self.chunk_size))

    def feature_spec(self) -> dict:
        """The pool rows' Adam-preconditioned, projected gradients at every checkpoint (kind ``less-grads``)."""
        return {"kind": "less-grads", "proxy": self.prepared_.key, "checkpoints": list(self.prepared_.checkpoints),
                "max_length": self.context_.max_length, "projection": self.projector_.definition,
                "dtype": self.context_.dtype}

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        examples = encode_for_model(self.model_, self.tokenizer_, records, self.context_.max_length)
        out = {f"grads_{ckpt}": self.features(examples, ckpt, adam=True) for ckpt in range(len(self.weights_))}
        out["scored"] = np.array([e.n_scored > 0 for e in examples], dtype=bool)  # rows with a token to learn from
        return out

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        influence = {task: np.zeros((len(records), len(feats[0])), dtype=np.float64)
                     for task, (feats, _) in self.targets_.items()}
        for ckpt, weight in enumerate(self.weights_):
            pool = features[f"grads_{ckpt}"]
            for task, (feats, _) in self.targets_.items():
                influence[task] += weight * (pool @ feats[ckpt].T)
        empty = ~features["scored"]  # nothing to learn from
        out = {}
        for task, column in self.score_columns(self.tasks_).items():
            groups = self.targets_[task][1]
            per_subtask = np.stack([influence[task][:, g].mean(axis=1) for g in groups], axis=1)
            scores = per_subtask.max(axis=1).astype(np.float32)
            scores[empty] = np.nan
            out[column] = scores
        return out

    def model_info(self) -> dict[str, dict]:
        prepared = getattr(self, "prepared_", None)  # None before prepare
        info = {"less.warmup": {k: getattr(prepared, k) for k in ("proxy", "key", "weights", "preset", "lora_r",
                                                                  "proj_dim")} if prepared else {}}
        store = getattr(self, "feature_store_", None)
        if store is not None:
            info["less.features"] = {"path": store.root, "dtype": store.dtype}
        return info
