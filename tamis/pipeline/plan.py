"""The run plan: what a config means, worked out once (targets, selectors, schema, files, chunks).

``tamis select``, ``tamis reselect``, ``--dry-run`` and the Flex Template launch all start from a
:class:`Plan`; nothing else re-derives the selectors, the output schema or the selection rule.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import ConfigError
from ..io.filesystems import file_digest
from ..io.runfolder import WORK, RunFolder, content_digest
from ..schemas.config import SelectConfig
from ..schemas.output import output_schema
from ..selectors import registry
from ..selectors.base import PoolSample, RunContext, Selector
from ..selectors.rules import Budget, Rule, TableRule, TopK
from .chunks import InputFile, count_lines
from .options import workers_elsewhere
from .selection import Driver, Ranking
from .sources import expand, read_records, read_targets

# Config keys that do not change any score: a run that differs only in these resumes.
_NOT_SCORING = {"budget", "out", "runner", "workers", "beam_args", "overwrite", "select_by", "decontaminate",
                "score_attempts", "budget_per_task", "duplicates", "feature_store"}


def scoring_key(config: SelectConfig, files: list[dict], targets: dict | None) -> str:
    """What the scores depend on: the scoring config, each input file's content, the targets' content."""
    payload = {k: v for k, v in config.model_dump().items() if k not in _NOT_SCORING}
    payload["files"] = [[f["path"], f["bytes"], f["sha256"]] for f in files]
    payload["targets"] = target_digests(targets)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_digests(targets: dict | None) -> dict[str, str]:
    """Task -> a hash of its parsed target examples (what decontamination and the scores see)."""
    return {task: content_digest(examples) for task, examples in sorted((targets or {}).items())}


def load_config(config: str | Path | dict | None = None, *, check_here: bool = True, **overrides: Any):
    """A validated SelectConfig from a YAML file or mapping, with keyword overrides on top.

    Everything that can be checked before anything loads is checked here, each failure one
    ConfigError line (or pydantic's ValidationError, which the CLI prints as one line): the
    file itself, every key and value, each selector's parameters against its constructor's
    annotations, and (``check_here``, for runs whose models load on this machine) whether the
    device exists.
    """
    data: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        data = read_yaml_config(Path(config))
    elif isinstance(config, dict):
        data = dict(config)
    elif config is not None:
        raise ConfigError(f"config must be a YAML file path or a mapping, got {type(config).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("pool", "selector", "beam_args"):  # one value where a list is expected
        if isinstance(data.get(key), (str, Path)):
            data[key] = [data[key]]
    cfg = SelectConfig(**data)
    check_selector_params(cfg)
    if check_here and cfg.runner in LOCAL_RUNNERS:
        from ..models.devices import check_device

        check_device(cfg.device)
    return cfg


#: Runners whose models load on this machine (so the device must exist here).
LOCAL_RUNNERS = ("DirectRunner", "direct", "PrismRunner", "prism")


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A --config file as a mapping, or one ConfigError line saying what is wrong with it."""
    import yaml

    from ..schemas.config import yaml_problem

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path}: is a folder; expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({yaml_problem(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a YAML mapping of config keys, got a {type(data).__name__}")
    return data


def check_selector_params(cfg) -> None:
    """Every selector named, and every parameter type-checked, before anything loads."""
    for name in cfg.selector:
        registry.get(name).check_params(cfg.params_for(name))
    unknown = {k.partition(".")[0] for k in cfg.param if "." in k} - set(cfg.selector)
    if unknown:
        raise ConfigError(f"--param scoped to a selector not in this run: {sorted(unknown)}")


def build_selectors(config: SelectConfig, targets: dict | None) -> list[Selector]:
    """Instantiate (not set up) each selector: validates parameters and targets early."""
    selectors = []
    for name in config.selector:
        selector = registry.create(name, config.params_for(name))
        if selector.needs_target and not targets:
            raise ConfigError(f"selector {name!r} needs --target (task=path)")
        selectors.append(selector)
    unknown = {k.partition(".")[0] for k in config.param if "." in k} - set(config.selector)
    if unknown:
        raise ConfigError(f"--param scoped to a selector not in this run: {sorted(unknown)}")
    return selectors


@dataclass
class Plan:
    """One run's plan. ``files`` is empty until :meth:`count_files` (listing needs the pool)."""

    config: SelectConfig
    targets: dict[str, list[dict]] | None
    selectors: list[Selector]
    schema: pa.Schema
    files: list[InputFile]

    @classmethod
    def build(cls, config: SelectConfig, targets: dict | None = None, read: bool = True) -> "Plan":
        """The plan of ``config``. With ``read`` the targets are read and the pool files listed and
        counted; without (``--dry-run``), task names stand in for targets and patterns for files."""
        if not read:
            targets = {t: [] for t in config.target} or None
        elif targets is None and config.target:
            targets = read_targets(config.target)
        selectors = build_selectors(config, targets)
        # A rule's own fields (kMQ's selection round) belong to the selection, written beside the shards.
        rule_fields = {f.name for s in selectors for f in getattr(s.selection_rule(), "fields", ())}
        columns = [c for s in selectors for c in s.columns(s.task_names(targets)) if c.name not in rule_fields]
        plan = cls(config, targets, selectors, output_schema(columns), [])
        rule = plan.rule()
        missing = sorted(set(rule.inputs) - set(plan.schema.names)) if isinstance(rule, TableRule) else []
        if missing:
            raise ValueError(f"selector {plan.driver.name!r} selects by column(s) {missing} that no selector in this "
                             f"run writes (columns: {', '.join(plan.schema.names)})")
        if not read:
            plan.files = [InputFile(i, p, 0, config.shard_rows) for i, p in enumerate(config.pool)]
        return plan

    def count_files(self) -> None:
        """List the pool and count each file's lines (the chunks follow)."""
        self.files = [InputFile(i, p, count_lines(p), self.config.shard_rows) for i, p in enumerate(expand(self.config.pool))]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def chunks(self) -> set[str]:
        return {f.chunk_name(k) for f in self.files for k in range(f.n_chunks)}

    @property
    def driver(self) -> Selector:
        return next(s for s in self.selectors if s.name == self.config.driver)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.targets or {})

    @property
    def budget(self) -> Budget:
        budget = self.config.budget
        return Budget(budget if budget is not None else self.driver.default_budget)

    def context(self) -> RunContext:
        c = self.config
        folder = RunFolder(c.out)
        shared = folder.join(WORK, "features") if workers_elsewhere(c) else None
        return RunContext(device=c.device, dtype=c.dtype, max_length=c.max_length, batch_tokens=c.batch_tokens,
                          seed=c.seed, work_dir=folder.work_dir, score_attempts=c.score_attempts,
                          shared_store=shared, feature_store=c.feature_store, feature_dtype=c.feature_dtype)

    def resume_key(self) -> dict:
        """The resume key and what it covers (kept in ``_work/plan.json`` to say what changed)."""
        files = [file_digest(p) for p in self.paths]
        return {"scoring_key": scoring_key(self.config, files, self.targets), "files": files,
                "targets": target_digests(self.targets)}

    def prepare(self) -> dict[str, Any]:
        """Each selector's once-per-run preparation (proxy training, fits) on a pool sample."""
        pool = PoolSample(lambda: read_records(self.config.pool))
        return {s.name: s.prepare(pool, self.targets, self.context()) for s in self.selectors}

    def rule(self) -> Rule:
        """The driving selector's rule, with the run's rule options (``budget_per_task``, ``duplicates``) on it."""
        rule = self.driver.selection_rule()
        options = {k: v for k, v in (("budget_per_task", self.config.budget_per_task),
                                     ("duplicate", self.config.duplicates)) if v is not None}
        if options and not isinstance(rule, TopK):
            raise ValueError(f"{', '.join(options)} apply to top-k selection; {self.driver.name!r} selects by "
                             f"{type(rule).__name__}")
        return dataclasses.replace(rule, **options) if options else rule

    def ranking(self, prepared: dict[str, Any], columns: dict | None = None) -> Ranking:
        """Pass 2: the driver's score columns (or ``columns``, a subset), its rule, the budget."""
        driver = self.driver
        rule = self.rule()
        return Ranking(columns or driver.score_columns(driver.task_names(self.targets)), rule, self.budget,
                       self.config.decontaminate,
                       Driver(driver.name, driver.get_params(), prepared.get(driver.name), self.targets, self.context())
                       if isinstance(rule, TableRule) else None)

    def prepared_from_json(self, data: dict) -> dict[str, Any]:
        """The prepared records a manifest kept (JSON), for a selection without scoring (reselect)."""
        return {s.name: s.prepared_type.from_json(data.get(s.name)) for s in self.selectors}
