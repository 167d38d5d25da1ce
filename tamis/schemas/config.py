"""Run configuration: the same names as CLI flags and YAML keys.

Unknown keys and bad values fail at once; :func:`config_error_line` turns pydantic's report
into the one line the CLI prints.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .output import check_name


class SelectConfig(BaseModel):
    """Everything ``tamis select`` needs. See the README's config reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: list[str] = Field(min_length=1, description="pool files or globs: .jsonl, .jsonl.gz, .parquet; any Beam filesystem path")
    out: str = Field(description="output folder (any Beam filesystem path)")
    target: dict[str, str] = Field(default_factory=dict, description="task name -> target examples file")
    selector: list[str] = Field(default_factory=lambda: ["rds"], min_length=1, description="selectors to run, by registered name")
    select_by: str | None = Field(default=None, description="the selector that drives the selection (default: the first)")
    budget: float | None = Field(default=None, gt=0, description="rows to select: <1 a fraction of the eligible rows "
                                 "(accepted, not a target match; a selector's skip window comes off the top), >=1 a count")
    budget_per_task: bool | None = Field(default=None, description="each task takes the whole budget, its own top rows "
                                         "(the LESS and CoLoR-Filter references); default: tasks share it round-robin")
    duplicates: Literal["next", "turn"] | None = Field(default=None, description="round-robin across tasks, when a task's "
                                                       "best row is taken: take the next ('next', default) or lose the turn "
                                                       "('turn', the RDS+ reference)")
    param: dict[str, Any] = Field(default_factory=dict, description="selector parameters; 'name.key' scopes one to a selector")
    shard_rows: int = Field(default=10_000, ge=1, description="rows per work unit and output shard")
    batch_tokens: int = Field(default=16_384, ge=64, description="padded tokens per model batch")
    max_length: int = Field(default=512, ge=8, description="tokens per example; longer ones are truncated at the end")
    decontaminate: bool = Field(default=True, description="leave out pool rows whose content equals a target example")
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    runner: str = Field(default="DirectRunner", description="DirectRunner, PortableRunner, or any Beam runner")
    workers: int = Field(default=1, ge=1, description="local worker processes (DirectRunner multi_processing when >1)")
    beam_args: list[str] = Field(default_factory=list, description="extra Beam pipeline options, passed through")
    overwrite: bool = Field(default=False, description="replace an existing run in OUT made with another config")
    score_attempts: int = Field(default=3, ge=1, description="tries per scoring call before its rows are rejected")

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
        if v is not None and v >= 1 and v != int(v):
            raise ValueError(f"a budget of 1 or more is a row count and must be whole, got {v}")
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
    """``key=value`` strings to a dict; values are read as YAML scalars (numbers, booleans)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--param {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else value
    return out


def parse_target_pairs(pairs: list[str]) -> dict[str, str]:
    """``task=path`` strings to a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        task, eq, path = pair.partition("=")
        if not eq or not task or not path:
            raise ValueError(f"--target {pair!r}: expected task=path")
        if task in out:
            raise ValueError(f"--target {task!r} given twice")
        out[task] = path
    return out


def config_error_line(err: ValidationError) -> str:
    """One line naming the first bad key and why."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = first["msg"].removeprefix("Value error, ")
    return f"bad value for '{loc}': {msg}{shown}"
