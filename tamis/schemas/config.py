"""Run configuration: the same names as CLI flags and YAML keys.

Unknown keys and bad values fail at once; :func:`config_error_line` turns pydantic's report
into the one line the CLI prints.
"""
from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from .output import check_name

DEVICE_PATTERN = re.compile(r"cpu|cuda|cuda:\d+|mps")


def _no_bool(value: Any) -> Any:
    """YAML's true/false are not numbers: ``shard_rows: true`` must not become 1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _only_bool(value: Any) -> Any:
    """Real booleans and the flag strings 'true'/'false'; never a string like "False" or "no"."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError(f"expected true or false, got {value!r}")


def _path_str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


Whole = Annotated[int, BeforeValidator(_no_bool)]
Number = Annotated[float, BeforeValidator(_no_bool)]
Flag = Annotated[bool, BeforeValidator(_only_bool)]
PathStr = Annotated[str, BeforeValidator(_path_str)]


def budget_problem(budget: Any) -> str | None:
    """Why a budget is refused, or None. A budget is a positive finite number: below 1 a
    fraction of the accepted rows, from 1 a whole row count."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        return f"expected a number, got {budget!r}"
    if not math.isfinite(budget) or budget <= 0:
        return f"expected a positive finite number (a fraction below 1, or a row count), got {budget!r}"
    if budget >= 1 and budget != int(budget):
        return f"a budget of 1 or more is a row count and must be whole, got {budget!r}"
    return None


def check_budget(budget: Any) -> float:
    """The budget as a float, or one ConfigError line: select, reselect and the API share it."""
    problem = budget_problem(budget)
    if problem:
        raise ConfigError(f"bad value for 'budget': {problem}")
    return float(budget)


def check_device_name(device: Any) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``: a typo fails here, before any model loads.
    Whether that device exists on this machine is :func:`tamis.models.devices.check_device`'s
    question."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"bad value for 'device': expected cpu, cuda, cuda:N or mps, got {device!r}")
    return device


class SelectConfig(BaseModel):
    """Everything ``tamis select`` needs. See the README's config reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: list[PathStr] = Field(min_length=1, description="pool files or globs: .jsonl, .jsonl.gz, .parquet; any Beam filesystem path")
    out: PathStr = Field(description="output folder (any Beam filesystem path)")
    target: dict[str, str] = Field(default_factory=dict, description="task name -> target examples file")
    selector: list[str] = Field(default_factory=lambda: ["rds"], min_length=1, description="selectors to run, by registered name")
    select_by: str | None = Field(default=None, description="the selector that drives the selection (default: the first)")
    budget: Number | None = Field(default=None, description="rows to select: <1 a fraction of the eligible rows "
                                  "(accepted, not a target match; a selector's skip window comes off the top), >=1 a count")
    budget_per_task: Flag | None = Field(default=None, description="each task takes the whole budget, its own top rows "
                                         "(the LESS and CoLoR-Filter references); default: tasks share it round-robin")
    duplicates: Literal["next", "turn"] | None = Field(default=None, description="round-robin across tasks, when a task's "
                                                       "best row is taken: take the next ('next', default) or lose the turn "
                                                       "('turn', the RDS+ reference)")
    param: dict[str, Any] = Field(default_factory=dict, description="selector parameters; 'name.key' scopes one to a selector")
    shard_rows: Whole = Field(default=10_000, ge=1, description="rows per work unit and output shard")
    batch_tokens: Whole = Field(default=16_384, ge=64, description="padded tokens per model batch")
    max_length: Whole = Field(default=512, ge=8, description="tokens per example; longer ones are truncated at the end")
    decontaminate: Flag = Field(default=True, description="leave out pool rows whose content equals a target example")
    seed: Whole = 0
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    runner: str = Field(default="DirectRunner", description="DirectRunner, PortableRunner, or any Beam runner")
    workers: Whole = Field(default=1, ge=1, description="local worker processes (DirectRunner multi_processing when >1)")
    beam_args: list[str] = Field(default_factory=list, description="extra Beam pipeline options, passed through")
    overwrite: Flag = Field(default=False, description="replace an existing run in OUT made with another config")
    score_attempts: Whole = Field(default=3, ge=1, description="tries per scoring call before its rows are rejected")
    feature_store: PathStr | None = Field(default=None, description="where pool features are kept (a folder or URL): "
                                          "default $TAMIS_CACHE/features, or OUT/_work/features when the workers "
                                          "share no disk with this machine; 'none' keeps nothing")
    feature_dtype: Literal["float32", "float16"] = Field(default="float32", description="stored embeddings and "
                                                         "gradients: float32, or float16 for half the bytes")

    @field_validator("target")
    @classmethod
    def _task_names(cls, v: dict[str, str]) -> dict[str, str]:
        for task in v:
            check_name(task, "task name")
        return v

    @field_validator("selector")
    @classmethod
    def _selector_names(cls, v: list[str]) -> list[str]:
        for name in v:
            check_name(name, "selector name")
        if len(set(v)) != len(v):
            raise ValueError(f"selector listed twice: {v}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: float | None) -> float | None:
        problem = None if v is None else budget_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"expected cpu, cuda, cuda:N or mps, got {v!r}")
        return v

    @model_validator(mode="after")
    def _select_by_known(self) -> "SelectConfig":
        if self.select_by is not None and self.select_by not in self.selector:
            raise ValueError(f"select_by {self.select_by!r} is not among the selectors {self.selector}")
        return self

    @property
    def driver(self) -> str:
        return self.select_by or self.selector[0]

    def params_for(self, selector: str) -> dict[str, Any]:
        """Parameters for one selector: unscoped keys apply to every selector, ``name.key`` to one."""
        out: dict[str, Any] = {}
        for key, value in self.param.items():
            scope, dot, rest = key.partition(".")
            if not dot:
                out[key] = value
            elif scope == selector:
                out[rest] = value
        return out


def parse_param_pairs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are read as YAML (numbers, booleans, lists);
    a value that is not valid YAML fails with one line."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--param {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError as e:
            raise ConfigError(f"--param {key.strip()}: {value!r} is not a valid YAML value ({yaml_problem(e)})") from None
    return out


def yaml_problem(err: Exception) -> str:
    """PyYAML's multi-line report as one phrase: what went wrong and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_target_pairs(pairs: list[str]) -> dict[str, str]:
    """``task=path`` strings to a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        task, eq, path = pair.partition("=")
        if not eq or not task or not path:
            raise ConfigError(f"--target {pair!r}: expected task=path")
        if task in out:
            raise ConfigError(f"--target {task!r} given twice")
        out[task] = path
    return out


def config_error_line(err: ValidationError) -> str:
    """One line naming the first bad key and why."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    value = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(value, dict) or "got " in msg else f" (got {value!r})"
    return f"bad value for '{loc}': {msg}{shown}"
