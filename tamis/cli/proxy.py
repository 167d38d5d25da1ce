"""``tamis train-proxy``: train (or reuse) the proxy LMs that LESS, CoLoR-Filter, EL2N and IRT use.

Without ``--model`` a small GPT-2-style proxy is built from a pool sample first. The warm-up
then trains on a seeded slice of the pool; with ``--target`` the warmed proxy is also fine-tuned
on the target examples (CoLoR-Filter's conditional model). Every stage is cached by its inputs,
so running the command again reuses what exists and says so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def _describe(label: str, proxy) -> list[str]:
    how = "reused from cache" if proxy.cached else (
        f"resumed after checkpoint {proxy.resumed_from}" if proxy.resumed_from else "trained")
    lines = [f"{label}: {proxy.path} ({how})"]
    for c in proxy.checkpoints:
        lines.append(f"  {c.path.name}: epoch {c.epoch:.2f}, step {c.step}, avg lr {c.avg_lr:.3g}, "
                     f"mean loss {c.mean_loss:.4f}")
    return lines


def _summary(proxy) -> dict:
    return {"path": str(proxy.path), "cached": proxy.cached, "mode": proxy.mode, "base": proxy.base,
            "checkpoints": [{"path": str(c.path), "epoch": c.epoch, "avg_lr": c.avg_lr, "mean_loss": c.mean_loss}
                            for c in proxy.checkpoints], "lr_weights": proxy.lr_weights()}


def train_proxy(
    pool: Annotated[list[str], typer.Argument(help="pool files or globs: .jsonl, .jsonl.gz, .parquet")],
    model: Annotated[Optional[str], typer.Option(help="Hugging Face causal LM id or local folder; default: build a small GPT-2 proxy from the pool")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file with 'build', 'train' and 'finetune' sections (field names as in tamis.schemas.proxy)")] = None,
    mode: Annotated[Optional[str], typer.Option(help="warm-up trains 'lora' adapters or 'full' parameters")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="fraction of the pool to warm up on (default 0.05)")] = None,
    max_examples: Annotated[Optional[int], typer.Option(help="cap on the warm-up slice")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="warm-up epochs (one checkpoint each)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="warm-up peak learning rate")] = None,
    seed: Annotated[Optional[int], typer.Option(help="training seed")] = None,
    target: Annotated[Optional[str], typer.Option(help="target examples: also fine-tune the warmed proxy on them")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="proxy cache folder (default $TAMIS_CACHE/proxies or ~/.cache/tamis/proxies)")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")] = "cpu",
    trust_remote_code: Annotated[bool, typer.Option(help="allow model code from the hub")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="print a JSON summary instead of text")] = False,
) -> None:
    """Train the proxy models selectors use, or reuse cached ones."""
    from pydantic import ValidationError
    from transformers.utils import logging as hf_logging

    from ..pipeline.plan import read_yaml_config
    from ..errors import ConfigError
    from ..models.build import build_proxy
    from ..models.devices import check_device
    from ..models.train import finetune_proxy
    from ..models.train import train_proxy as warm_up
    from ..pipeline.sources import read_records, read_targets
    from ..schemas.config import check_device_name, config_error_line
    from ..schemas.proxy import ProxyModelConfig, TrainConfig

    check_device(check_device_name(device))
    sections = read_yaml_config(config) if config else {}
    unknown = set(sections) - {"build", "train", "finetune"}
    flags = {"mode": mode, "fraction": fraction, "max_examples": max_examples, "epochs": epochs, "lr": lr, "seed": seed}
    if unknown:
        raise ConfigError(f"unknown config section {sorted(unknown)[0]!r} (expected build, train, finetune)")
    try:
        build_config = ProxyModelConfig(**(sections.get("build") or {}))
        train_config = TrainConfig(**{**(sections.get("train") or {}), **{k: v for k, v in flags.items() if v is not None}})
        finetune_config = TrainConfig(**{**train_config.model_dump(), "epochs": 1, **(sections.get("finetune") or {})})
    except ValidationError as e:
        raise ConfigError(config_error_line(e)) from e

    hf_logging.disable_progress_bar()  # our own bar shows the training; theirs only show file loading
    lines: list[str] = []
    summary: dict = {}
    start = model
    if start is None:
        built = build_proxy(read_records(pool), build_config, cache_dir=cache_dir, device=device, progress=progress)
        lines += _describe("built proxy", built)
        summary["built"] = _summary(built)
        start = built
    warmed = warm_up(start, read_records(pool), train_config, cache_dir=cache_dir, device=device, progress=progress,
                     trust_remote_code=trust_remote_code)
    lines += _describe("warm-up proxy", warmed)
    summary["warmup"] = _summary(warmed)
    if target is not None:
        targets = read_targets({"target": target})["target"]
        tuned = finetune_proxy(warmed, targets, finetune_config, cache_dir=cache_dir, device=device, progress=progress)
        lines += _describe("fine-tuned proxy", tuned)
        summary["finetune"] = _summary(tuned)
    typer.echo(json.dumps(summary, indent=2) if json_output else "\n".join(lines))
