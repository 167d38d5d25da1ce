"""How selectors get their proxy LMs: one spec, one function that builds or warms one up, and
the small reference a worker loads it back from.

A :class:`ProxySpec` says either "warm up this model" (``model`` given: a hub id or folder,
trained in full or with LoRA on a pool sample) or "build a small GPT-2 from the pool" (``model``
None: a byte-level BPE tokenizer and a model of the given shape, trained from scratch).
:func:`obtain_proxy` does it through the proxy cache, so the same spec on the same sample is
trained once, whichever selector asks: CoLoR-Filter's prior and LESS's base share a build when
their specs agree, because their specs are equal, not because a selector copies another's values.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..schemas.proxy import ProxyModelConfig, TrainConfig
from .build import build_proxy
from .lm import load_causal_lm
from .train import TrainedProxy, train_proxy

_BUILD = ProxyModelConfig()


@dataclass(frozen=True)
class ProxySpec:
    """A proxy to build or warm up. Shape fields apply to a built proxy only."""

    model: str | None = None  # HF id or folder to warm up; None builds a small GPT-2 from the pool
    mode: str = "full"  # "full" or "lora" training of a given model (a built proxy is always full)
    epochs: int = _BUILD.epochs  # passes over the sample; 0 keeps a given model as it is
    batch_size: int = _BUILD.batch_size
    lr: float = _BUILD.lr
    n_layer: int = _BUILD.n_layer
    n_embd: int = _BUILD.n_embd
    n_head: int = _BUILD.n_head
    vocab_size: int = _BUILD.vocab_size
    positions: int = _BUILD.context  # the built model's positions (and tokens per training example)
    sample_size: int = _BUILD.sample_size  # pool rows the build trains its tokenizer and model on
    checkpoints_per_epoch: int = 1
    trust_remote_code: bool = False
    # Any other ProxyModelConfig fields of a built proxy (warmup_ratio, dropout, ...; a "seed" here
    # overrides the run's), under ProxyModelConfig's names; they win over the fields above.
    build_options: dict | None = None

    def __post_init__(self):
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {self.mode!r}")
        if self.epochs < 0 or (self.epochs == 0 and self.model is None):
            raise ValueError("a proxy built from the pool needs at least one epoch of training")

    def build_config(self, seed: int) -> ProxyModelConfig:
        """The :class:`ProxyModelConfig` of the built proxy (its cache key), for run seed ``seed``."""
        fields_ = dict(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, vocab_size=self.vocab_size,
                       context=self.positions, sample_size=self.sample_size, seed=seed, epochs=self.epochs,
                       batch_size=self.batch_size, lr=self.lr)
        return ProxyModelConfig(**{**fields_, **(self.build_options or {})})

    def warmup_config(self, seed: int, max_length: int) -> TrainConfig:
        """The :class:`TrainConfig` that warms a given model up on the whole sample."""
        return TrainConfig(mode=self.mode, fraction=1.0, seed=seed, epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, max_length=max_length, checkpoints_per_epoch=self.checkpoints_per_epoch)

    @classmethod
    def from_params(cls, params: dict) -> "ProxySpec":
        """A spec from a selector's parameters of the same names (unknown names are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def obtain_proxy(spec: ProxySpec, sample: list[dict], *, seed: int, max_length: int, device: str = "cpu",
                 progress: bool = False) -> TrainedProxy | None:
    """Build (``spec.model`` None) or warm up the proxy on ``sample``, through the proxy cache.
    None when a given model is to be used as it is (``epochs=0``)."""
    if spec.model is None:
        return build_proxy(sample, spec.build_config(seed), device=device, progress=progress,
                           checkpoints_per_epoch=spec.checkpoints_per_epoch)
    if spec.epochs == 0:
        return None
    return train_proxy(spec.model, sample, spec.warmup_config(seed, max_length), device=device, progress=progress,
                       trust_remote_code=spec.trust_remote_code)


def proxy_ref(proxy: TrainedProxy | None, spec: ProxySpec | None = None) -> dict:
    """What a worker needs to load a proxy again (JSON, for the run's prepared state): a trained
    proxy's cache folder, or the given model's name when it was not trained."""
    if proxy is not None:
        return {"path": str(proxy.path), "key": proxy.key, "checkpoint": proxy.final.index}
    if spec is None or spec.model is None:
        raise ValueError("an untrained proxy needs the spec that names its model")
    return {"model": spec.model, "trust_remote_code": spec.trust_remote_code}


def open_proxy(ref: dict) -> TrainedProxy | str:
    """The trained proxy a :func:`proxy_ref` names, or the plain model name (to train further)."""
    return TrainedProxy.open(ref["path"]) if "path" in ref else ref["model"]


def load_proxy(ref: dict, *, device: str = "cpu", dtype: str = "float32", trainable: bool = False):
    """(model, tokenizer) of a :func:`proxy_ref`. ``trainable`` keeps LoRA weights differentiable
    (per-example gradients over them)."""
    if "path" in ref:
        return TrainedProxy.open(ref["path"]).load(device=device, dtype=dtype, trainable=trainable)
    return load_causal_lm(ref["model"], device=device, dtype=dtype, trust_remote_code=ref.get("trust_remote_code", False))
