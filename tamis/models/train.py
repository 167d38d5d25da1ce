"""Training proxy LMs: warm-up (full or LoRA) on a pool slice, and fine-tuning on targets.

A run lives in one cache folder (``tamis.models.cache``) keyed by its inputs and holds
``checkpoint-1`` ... ``checkpoint-K`` (one per epoch by default). Each checkpoint has

* the weights as safetensors: a whole Hugging Face model folder (full training) or a peft
  adapter folder (LoRA);
* ``optimizer.safetensors``: AdamW's ``exp_avg.<param>`` and ``exp_avg_sq.<param>`` for every
  trainable parameter, named as ``model.named_parameters()`` names them, with the step count and
  the checkpoint's average learning rate in the metadata (LESS weights checkpoints by it);
* ``trainer_state.json``: epoch, step, average learning rate, mean training loss.

Runs are deterministic: the slice is drawn by hashing ids with ``sample_seed``, every epoch's
order comes from ``(seed, epoch)`` and the dropout generator is reseeded at each checkpoint
interval, so a run killed after checkpoint k and started again continues from checkpoint k and
ends with the same weights as an uninterrupted run. ``manifest.json`` is written last: its
presence marks a finished run that later calls reuse.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..schemas.proxy import TrainConfig
from .batching import token_batches
from .cache import (cache_root, content_hash, key_lock, read_manifest, record_key, slice_digest,
                    write_json_atomic)
from .lm import Encoded, encode_for_model, load_causal_lm, pad_batch, quiet_peft, token_nll
from .loading import fingerprint, resolve_model

log = logging.getLogger("tamis.models")

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
INPUTS_FILE = "inputs.json"
# Attention projections, which LESS adapts, by architecture family (module-name suffixes).
LORA_TARGET_CANDIDATES = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("c_attn", "attn.c_proj"),
    ("query_key_value", "dense"),
    ("Wqkv", "out_proj"),
)


# -- slices ---------------------------------------------------------------------------------
def slice_position(record: dict, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, record id): the record's place in every slice draw."""
    digest = hashlib.sha256(f"{seed}\x00{record_key(record)}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def select_slice(records: Iterable[dict], fraction: float = 1.0, max_examples: int | None = None,
                 seed: int = 42) -> list[dict]:
    """The records whose position falls under ``fraction`` (at most ``max_examples``, lowest
    positions first), in position order. One streaming pass; independent of file order."""
    heap: list[tuple[float, int, dict]] = []  # max-heap by position via negation when capped
    kept: list[tuple[float, int, dict]] = []
    for n, r in enumerate(records):
        u = slice_position(r, seed)
        if u >= fraction:
            continue
        if max_examples is None:
            kept.append((u, n, r))
        elif len(heap) < max_examples:
            heapq.heappush(heap, (-u, -n, r))
        elif -heap[0][0] > u:
            heapq.heapreplace(heap, (-u, -n, r))
    if max_examples is not None:
        kept = [(-u, -n, r) for u, n, r in heap]
    kept.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in kept]


# -- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint of a run."""

    path: Path
    index: int
    epoch: float
    step: int
    avg_lr: float
    mean_loss: float

    def adam_moments(self, device: str = "cpu") -> dict:
        """``{param name: (exp_avg, exp_avg_sq)}`` read from ``optimizer.safetensors``."""
        from safetensors.torch import load_file

        tensors = load_file(str(self.path / OPTIMIZER_FILE), device=device)
        return {k[len("exp_avg."):]: (v, tensors["exp_avg_sq." + k[len("exp_avg."):]])
                for k, v in tensors.items() if k.startswith("exp_avg.")}


@dataclass
class TrainedProxy:
    """A finished (or interrupted) run: where it is, what it started from, its checkpoints."""

    path: Path
    key: str
    base: str  # the model the checkpoints apply to: a hub id or folder (for LoRA, the frozen base)
    mode: str
    checkpoints: list[Checkpoint]
    cached: bool = False  # True when reused from the cache without training
    complete: bool = True
    resumed_from: int = 0  # checkpoints already there when this call started
    trust_remote_code: bool = False
    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]

    @property
    def final_model_path(self) -> str:
        """A folder (or hub id) loadable as a full model: the final checkpoint, or the LoRA base."""
        return str(self.final.path) if self.mode == "full" else self.base

    def lr_weights(self) -> list[float]:
        """Checkpoint weights for LESS: the average learning rates, normalized to sum to 1."""
        total = sum(c.avg_lr for c in self.checkpoints)
        n = len(self.checkpoints)
        return [c.avg_lr / total if total > 0 else 1.0 / n for c in self.checkpoints]

    def load(self, checkpoint: int = -1, *, device: str = "cpu", dtype: str = "float32", trainable: bool = False,
             attn_implementation: str = "eager"):
        """(model, tokenizer) at one checkpoint (default the last). ``trainable`` keeps LoRA
        weights trainable, which per-example gradients over LoRA parameters need."""
        ckpt = self.checkpoints[checkpoint]
        if self.mode == "full":
            model, tok = load_causal_lm(str(ckpt.path), device=device, dtype=dtype,
                                        trust_remote_code=self.trust_remote_code, attn_implementation=attn_implementation)
            for p in model.parameters():
                p.requires_grad_(trainable)
            return model, tok
        return load_causal_lm(self.base, device=device, dtype=dtype, trust_remote_code=self.trust_remote_code,
                              adapter=str(ckpt.path), trainable=trainable, attn_implementation=attn_implementation)

    @classmethod
    def open(cls, path: str | os.PathLike, cached: bool = True, base: str | None = None) -> "TrainedProxy":
        """A run from its cache folder (finished or not)."""
        path = Path(path)
        inputs = json.loads((path / INPUTS_FILE).read_text())
        manifest = read_manifest(path)
        checkpoints = finished_checkpoints(path)
        # ``base`` overrides the recorded one: a worker's own copy of the base model, where the
        # recorded path lies on the machine that trained the proxy.
        return cls(path=path, key=path.name, base=base or inputs["base"], mode=inputs["config"]["mode"],
                   checkpoints=checkpoints, cached=cached, complete=manifest is not None,
                   trust_remote_code=inputs.get("trust_remote_code", False),
                   history=(manifest or {}).get("history") or step_history(checkpoints))


def finished_checkpoints(run_dir: Path) -> list[Checkpoint]:
    out = []
    for d in Path(run_dir).glob("checkpoint-*"):
        state_path = d / STATE_FILE
        if d.is_dir() and state_path.is_file():
            s = json.loads(state_path.read_text())
            out.append(Checkpoint(d, s["index"], s["epoch"], s["step"], s["avg_lr"], s["mean_loss"]))
    return sorted(out, key=lambda c: c.index)


# -- schedule -------------------------------------------------------------------------------
# Hugging Face's schedulers: linear warmup from 0, then linear or cosine decay to 0 (or constant).
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
# Part of every training's cache key: the same config trained by another schedule implementation
# differs in the last bits of its learning rates, so it is another run.
ENGINE = "tamis-train-v3 (transformers.get_scheduler, torch AdamW.load_state_dict, warm-up < total steps)"


def make_scheduler(opt, total: int, config: TrainConfig, start_step: int = 0):
    """The learning-rate schedule (``transformers.get_scheduler``) over ``total`` optimizer steps,
    replayed to ``start_step`` when a run resumes: the rate is a function of the step alone."""
    from transformers import get_scheduler

    # Warm-up steps as Hugging Face counts them (ceil of ratio x total), but never every step: the
    # first warm-up step has rate 0, so a one-step training (a conditional model on a few targets)
    # would otherwise not train at all. From two steps on this is exactly the usual count.
    warmup = min(math.ceil(config.warmup_ratio * total), max(total - 1, 0))
    scheduler = get_scheduler(SCHEDULERS[config.schedule], opt, num_warmup_steps=warmup, num_training_steps=total)
    with warnings.catch_warnings():  # replaying before any optimizer step is the point here
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        for _ in range(start_step):
            scheduler.step()
    return scheduler


def _segment_steps(steps_per_epoch: int, config: TrainConfig) -> list[tuple[int, int, int]]:
    """(epoch, first global step, end global step) of each checkpoint interval."""
    out = []
    k = config.checkpoints_per_epoch
    for epoch in range(config.epochs):
        bounds = [round(j * steps_per_epoch / k) for j in range(k + 1)]
        for j in range(k):
            out.append((epoch, epoch * steps_per_epoch + bounds[j], epoch * steps_per_epoch + bounds[j + 1]))
    return out


def _seed_of(*parts) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -- the training engine --------------------------------------------------------------------
def _lora_targets(model, config: TrainConfig) -> list[str] | None:
    if config.lora_targets:
        return list(config.lora_targets)
    names = [n for n, _ in model.named_modules()]
    for family in LORA_TARGET_CANDIDATES:
        if all(any(n == t or n.endswith("." + t) for n in names) for t in family):
            return list(family)
    return None  # peft's own default for the architecture


def _uses_conv1d(model, targets: list[str] | None) -> bool:
    """GPT-2 stores its projections transposed (``Conv1D``); peft must be told so."""
    if not targets:
        return False
    return any(type(module).__name__ == "Conv1D" and any(n == t or n.endswith("." + t) for t in targets)
               for n, module in model.named_modules())


def _prepare_model(base: str, init_adapter: str | None, resume_from: Checkpoint | None, config: TrainConfig,
                   device: str, trust_remote_code: bool):
    """The model to train, with exactly its trainable parameters requiring grad."""
    import torch

    if resume_from is not None and config.mode == "full":
        model, tok = load_causal_lm(str(resume_from.path), trust_remote_code=trust_remote_code)
    elif resume_from is not None:
        model, tok = load_causal_lm(base, trust_remote_code=trust_remote_code, adapter=str(resume_from.path), trainable=True)
    elif config.mode == "full":
        model, tok = load_causal_lm(base, trust_remote_code=trust_remote_code, adapter=init_adapter)
        if init_adapter is not None:
            model = model.merge_and_unload()
    elif init_adapter is not None:
        model, tok = load_causal_lm(base, trust_remote_code=trust_remote_code, adapter=init_adapter, trainable=True)
    else:
        from peft import LoraConfig, get_peft_model

        model, tok = load_causal_lm(base, trust_remote_code=trust_remote_code)
        torch.manual_seed(_seed_of("lora-init", config.seed))
        targets = _lora_targets(model, config)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM",
                          fan_in_fan_out=_uses_conv1d(model, targets))
        with quiet_peft():
            model = get_peft_model(model, lora)
    if config.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(torch.device(device))
    return model, tok


def _make_optimizer(model, config: TrainConfig):
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # No weight decay on biases and norm scales (vectors), as Hugging Face's Trainer does.
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps)
    return opt, named


def _save_optimizer(path: Path, opt, named, step: int, avg_lr: float, epoch: float) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, p in named:
        state = opt.state.get(p, {})
        if "exp_avg" in state:
            tensors["exp_avg." + name] = state["exp_avg"].detach().float().cpu().contiguous()
            tensors["exp_avg_sq." + name] = state["exp_avg_sq"].detach().float().cpu().contiguous()
    save_file(tensors, str(path), metadata={"step": str(step), "avg_lr": repr(avg_lr), "epoch": repr(epoch),
                                            "format": "tamis-adamw-v1"})


def _load_optimizer(path: Path, opt, named, step: int) -> None:
    """Adam's moments of a checkpoint back into ``opt``, through torch's own ``load_state_dict``
    (which moves them to each parameter's device and dtype)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    state = {index[id(p)]: {"step": torch.tensor(float(step)), "exp_avg": tensors["exp_avg." + name],
                            "exp_avg_sq": tensors["exp_avg_sq." + name]}
             for name, p in named if "exp_avg." + name in tensors}
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _save_checkpoint(run_dir: Path, index: int, model, tokenizer, opt, named, config: TrainConfig, *,
                     epoch: float, step: int, avg_lr: float, mean_loss: float, steps: list[dict]) -> Checkpoint:
    final = run_dir / f"checkpoint-{index}"
    tmp = run_dir / f".checkpoint-{index}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if config.mode == "full":
        tokenizer.save_pretrained(str(tmp))
    _save_optimizer(tmp / OPTIMIZER_FILE, opt, named, step, avg_lr, epoch)
    state = {"index": index, "epoch": epoch, "step": step, "avg_lr": avg_lr, "mean_loss": mean_loss,
             "steps": steps}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return Checkpoint(final, index, epoch, step, avg_lr, mean_loss)


def _progress(enabled: bool, description: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _step_loss(model, examples: Sequence[Encoded], rows: Sequence[int], config: TrainConfig, pad_id: int, device):
    """Forward and backward over one optimizer step's rows, in micro-batches. The loss is the mean
    over all scored tokens of the step (``loss_weighting="token"``) or the mean over the step's
    examples of each one's token mean (``"example"``; examples with no scored token left out),
    however the rows are split. Returns that loss (float)."""
    import torch

    total = sum(examples[i].n_scored for i in rows)
    if total == 0:
        return float("nan")
    per_example = config.loss_weighting == "example"
    counted = sum(1 for i in rows if examples[i].n_scored > 0)
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.dtype)
    loss_sum = 0.0
    for micro in token_batches([len(examples[i]) for i in rows], config.micro_batch_tokens):
        batch = [examples[rows[j]] for j in micro]
        ids, mask, labels = pad_batch(batch, pad_id, device)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = model(input_ids=ids, attention_mask=mask).logits
        nll, scored = token_nll(logits, labels)
        if per_example:  # each row's token mean, then an equal share of the step
            rows_nll = nll.sum(dim=1) / scored.sum(dim=1).clamp_min(1)
            loss = rows_nll.sum() / counted
        else:
            loss = nll.sum() / total
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def run_training(run_dir: Path, *, base: str, init_adapter: str | None, records: Sequence[dict],
                 config: TrainConfig, device: str = "cpu", progress: bool = True,
                 stop_after_checkpoint: int | None = None, trust_remote_code: bool = False,
                 description: str = "training") -> tuple[list[Checkpoint], int]:
    """Train in ``run_dir``, resuming from its last finished checkpoint. Returns (checkpoints,
    number already there at the start). Stops early after checkpoint
    ``stop_after_checkpoint`` when given (the run is then unfinished)."""
    import numpy as np
    import torch

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".checkpoint-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    done = finished_checkpoints(run_dir)
    resumed_from = len(done)
    model, tokenizer = _prepare_model(base, init_adapter, done[-1] if done else None, config, device, trust_remote_code)
    examples = encode_for_model(model, tokenizer, records, config.max_length)
    if not examples:
        raise ValueError("no examples to train on (is the slice empty?)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    opt, named = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    segments = _segment_steps(steps_per_epoch, config)
    if done:
        _load_optimizer(done[-1].path / OPTIMIZER_FILE, opt, named, done[-1].step)
    trainable = [p for _, p in named]
    model.train()
    start_step = done[-1].step if done else 0
    scheduler = make_scheduler(opt, total_steps, config, start_step)
    with _progress(progress, description) as bar:
        task = bar.add_task(description, total=total_steps, completed=start_step, loss="-")
        for index, (epoch, first, end) in enumerate(segments, start=1):
            if index <= resumed_from:
                continue
            torch.manual_seed(_seed_of("dropout", config.seed, index))
            order = np.random.default_rng([config.seed, epoch]).permutation(len(examples))
            lrs, losses, segment_history = [], [], []
            for step in range(first, end):
                in_epoch = step - epoch * steps_per_epoch
                rows = order[in_epoch * config.batch_size : (in_epoch + 1) * config.batch_size].tolist()
                lr = opt.param_groups[0]["lr"]
                loss = _step_loss(model, examples, rows, config, pad_id, device)
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                if not math.isnan(loss):
                    opt.step()
                opt.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # a skipped (NaN) first step still advances the schedule
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                    scheduler.step()
                lrs.append(lr)
                losses.append(loss)
                segment_history.append({"step": step + 1, "lr": lr, "loss": loss})
                bar.update(task, advance=1, loss=f"{loss:.4f}")
            finite = [x for x in losses if not math.isnan(x)]
            ckpt = _save_checkpoint(
                run_dir, index, model, tokenizer, opt, named, config,
                epoch=round(end / steps_per_epoch, 6), step=end,
                avg_lr=float(np.mean(lrs)) if lrs else 0.0,
                mean_loss=float(np.mean(finite)) if finite else float("nan"), steps=segment_history,
            )
            done.append(ckpt)
            log.info("saved %s (epoch %.2f, mean loss %.4f, avg lr %.3g)", ckpt.path, ckpt.epoch, ckpt.mean_loss, ckpt.avg_lr)
            if stop_after_checkpoint is not None and index >= stop_after_checkpoint and index < len(segments):
                break
    return done, resumed_from


def step_history(checkpoints: Sequence[Checkpoint]) -> list[dict]:
    """``{"step", "lr", "loss"}`` for every optimizer step, read back from the checkpoints."""
    out = []
    for c in checkpoints:
        out.extend(json.loads((c.path / STATE_FILE).read_text()).get("steps", []))
    return out


# -- public entry points --------------------------------------------------------------------
def model_identity(model: str | TrainedProxy) -> dict:
    """What a starting model contributes to a cache key: a proxy's key, a local folder's file
    hash, or a hub id as given."""
    if isinstance(model, TrainedProxy):
        return {"proxy": model.key, "checkpoint": model.final.index}
    local = fingerprint(model)
    return {"folder_sha256": local} if local is not None else {"hub_id": resolve_model(model)}


def _start_of(model: str | TrainedProxy, trust_remote_code: bool) -> tuple[str, str | None, bool]:
    """(base model, adapter to start from, trust_remote_code) for a starting model."""
    if isinstance(model, TrainedProxy):
        adapter = str(model.final.path) if model.mode == "lora" else None
        return model.final_model_path, adapter, trust_remote_code or model.trust_remote_code
    return model, None, trust_remote_code


def train_cached(inputs: dict, *, base: str | None, init_adapter: str | None, records: list[dict], config: TrainConfig,
                 cache_dir=None, device: str = "cpu", progress: bool = True,
                 stop_after_checkpoint: int | None = None, trust_remote_code: bool = False,
                 prepare=None) -> TrainedProxy:
    """Train under the cache key of ``inputs`` (plus the slice and config), or reuse the finished
    run. ``prepare(run_dir)``, when given, runs under the key's lock before training and returns
    the base model path when ``base`` is None (the builder writes its initial model there)."""
    if not records:
        raise ValueError(f"{inputs.get('kind', 'training')}: no examples to train on")
    inputs = {**inputs, "slice": slice_digest(records), "config": config.model_dump(mode="json"), "engine": ENGINE}
    key = content_hash(inputs)
    root = cache_root(cache_dir)
    run_dir = root / key
    with key_lock(root, key):
        if read_manifest(run_dir) is not None:
            log.info("reusing cached proxy %s", run_dir)
            return TrainedProxy.open(run_dir, cached=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        if prepare is not None:
            prepared = prepare(run_dir)
            base = base if base is not None else prepared
        if base is None:
            raise ValueError("no base model to train")
        write_json_atomic(run_dir / INPUTS_FILE, {**inputs, "base": base, "init_adapter": init_adapter,
                                                  "n_examples": len(records),
                                                  "trust_remote_code": trust_remote_code})
        checkpoints, resumed_from = run_training(
            run_dir, base=base, init_adapter=init_adapter, records=records, config=config, device=device,
            progress=progress, stop_after_checkpoint=stop_after_checkpoint, trust_remote_code=trust_remote_code,
            description=str(inputs.get("kind", "training")),
        )
        complete = len(checkpoints) == config.epochs * config.checkpoints_per_epoch
        history = step_history(checkpoints)
        if complete:
            write_json_atomic(run_dir / "manifest.json", {
                "key": key, "complete": True, "history": history,
                "checkpoints": [{"path": c.path.name, "epoch": c.epoch, "step": c.step, "avg_lr": c.avg_lr,
                                 "mean_loss": c.mean_loss} for c in checkpoints],
            })
        if resumed_from:
            log.info("resumed %s from checkpoint %d", run_dir, resumed_from)
    return TrainedProxy(path=run_dir, key=key, base=base, mode=config.mode, checkpoints=checkpoints, cached=False,
                        complete=complete, resumed_from=resumed_from, trust_remote_code=trust_remote_code,
                        history=history)


def train_proxy(model: str | TrainedProxy, records: Iterable[dict], config: TrainConfig | None = None, *,
                cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
                stop_after_checkpoint: int | None = None, trust_remote_code: bool = False) -> TrainedProxy:
    """Warm-up training of ``model`` (hub id, folder, or a :class:`TrainedProxy`) on the slice of
    ``records`` that ``config`` draws. Reuses the cached run when the inputs are unchanged
    (``result.cached``) and resumes an interrupted one (``result.resumed_from``)."""
    config = config or TrainConfig()
    chosen = select_slice(records, config.fraction, config.max_examples, config.sample_seed)
    base, adapter, trust = _start_of(model, trust_remote_code)
    return train_cached({"kind": "warmup", "start": model_identity(model)}, base=base, init_adapter=adapter,
                        records=chosen, config=config, cache_dir=cache_dir, device=device, progress=progress,
                        stop_after_checkpoint=stop_after_checkpoint, trust_remote_code=trust)


def finetune_proxy(model: str | TrainedProxy, targets: Iterable[dict], config: TrainConfig | None = None, *,
                   cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
                   stop_after_checkpoint: int | None = None, trust_remote_code: bool = False) -> TrainedProxy:
    """Fine-tune an existing proxy on all ``targets`` with a fresh optimizer and schedule
    (CoLoR-Filter's conditional model). ``config.fraction`` and ``max_examples`` are ignored.
    A LoRA proxy keeps training its adapter in LoRA mode, or is merged first in full mode."""
    config = (config or TrainConfig(mode="full", epochs=1, lr=1e-3)).model_copy(update={"fraction": 1.0, "max_examples": None})
    chosen = select_slice(targets, 1.0, None, config.sample_seed)
    base, adapter, trust = _start_of(model, trust_remote_code)
    return train_cached({"kind": "finetune", "start": model_identity(model)}, base=base, init_adapter=adapter,
                        records=chosen, config=config, cache_dir=cache_dir, device=device, progress=progress,
                        stop_after_checkpoint=stop_after_checkpoint, trust_remote_code=trust)
