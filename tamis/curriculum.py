"""Training in order of difficulty: PUDF's DDS-MAE scheduler and a sampler for PyTorch and Hugging Face.

DDS-MAE (dynamic data selection by model ability estimation, Meng et al.) before each epoch
runs the model on a small probe set whose difficulties are known, estimates the model's ability
theta by MAP (N(0, 1) prior) from its right/wrong answers, and trains the epoch on the items
with difficulty b <= theta (at least ``min_items``, the easiest ones). When theta does not beat
the best estimate so far, the threshold rises by 0.1 instead, so training never stalls.

:class:`CurriculumSampler` turns difficulties (and stages) into the order a ``DataLoader``
draws rows in: easiest stage first, easiest row first within a stage. With a :class:`DDSMAE`
scheduler it yields only the rows admitted for the current epoch; call
:meth:`CurriculumSampler.update` with the probe answers before each epoch.

Plain PyTorch::

    rows = tamis.load_selected(out, curriculum=True)            # easiest first
    sampler = CurriculumSampler(rows["difficulty"], rows["curriculum_stage"], scheduler=DDSMAE(rows["difficulty"]))
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        sampler.update(probe_answers(model), probe_difficulty)  # 1/0 per probe item
        for batch in loader: ...

Hugging Face ``Trainer`` (it fixes the steps per epoch from the sampler's length at the start,
so give the sampler ``epoch_size=len(dataset)``; the admitted rows are then cycled to fill it)::

    class CurriculumTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return sampler
    trainer = CurriculumTrainer(..., callbacks=[hf_callback(sampler, probe)])

where ``probe(model) -> (answers, difficulty)`` and :func:`hf_callback` calls
``sampler.update`` at the start of every epoch, before the epoch's iterator is made.

The probe: a few hundred rows scored by the same ``irt`` run but kept out of training. Judge the
model's answers on them as the crowd was judged, so theta and b share a scale: right when its
mean token loss is under the run's threshold (``manifest.json``: ``prepared.irt.loss_threshold``;
:func:`lm_probe_answers`) or, for classification rows, when it predicts the label. A mean token
loss depends on the tokenizer, so the threshold means the same only for a model that tokenizes
as the crowd did (the crowd's tokenizer is in every subject's folder); with another tokenizer
theta lands on a shifted scale. ``benchmarks/curriculum_wordnet.py`` does all of this end to end.

The start (``start``): PUDF begins with ``prev_cap = -5`` and ``cur_cap = 0`` (``"pudf"``, the
default). A first theta above -5 is progress and sets the threshold to theta; a first theta at
or below -5 is not, so the first epoch trains at capacity 0.1, about half the rows when b is
centred at 0. ``"easiest"`` has no floor: the first theta always counts, so a learner that
answers every probe row wrong (theta far below the easiest b) starts on the ``min_items``
easiest rows and the threshold then rises by 0.1 per epoch until theta improves. With a few
hundred probe rows an all-wrong learner's theta is about -3 to -4, so the two starts agree;
they differ for very large probe sets or extreme difficulties. Early epochs can be short, so
compare DDS-MAE with other orders at equal optimizer steps, not at equal epochs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

# Imported at the top, unlike elsewhere in tamis: this module is for training code, which has
# torch loaded anyway, and the sampler must subclass torch's Sampler.
from torch.utils.data import Sampler

from .irt import estimate_theta, loss_answers
from .models.stats import mean_token_loss

THRESHOLD_STEP = 0.1  # PUDF: the threshold rises by this much after an epoch without progress
MIN_ITEMS = 100  # PUDF's --min-train-length
PUDF_START = (-5.0, 0.0)  # PUDF's initial (prev_cap, cur_cap)
STARTS = ("pudf", "easiest")


def epoch_items(b, theta: float, min_items: int = MIN_ITEMS, lower: float = -math.inf,
                upper: float = 0.0) -> np.ndarray:
    """Indices of the items to train on at ability ``theta``, easiest first:
    {i : theta + lower <= b_i <= theta + upper} (PUDF's defaults: b <= theta), or the
    ``min_items`` easiest when fewer qualify. NaN difficulties never qualify."""
    b = np.asarray(b, dtype=np.float64)
    order = _easiest_first(b)
    chosen = order[(b[order] >= theta + lower) & (b[order] <= theta + upper)]
    if len(chosen) < min(min_items, len(order)):
        chosen = order[: min(min_items, len(order))]
    return chosen


def _easiest_first(b: np.ndarray, stage=None) -> np.ndarray:
    """Indices with a finite difficulty, sorted by (stage, difficulty, index)."""
    finite = np.flatnonzero(np.isfinite(b))
    keys = [finite, b[finite]] if stage is None else [finite, b[finite], np.asarray(stage)[finite]]
    return finite[np.lexsort(keys)]


class DDSMAE:
    """PUDF's scheduler: one ability estimate per epoch, and the items it admits.

    ``difficulty`` (and ``discrimination`` for a 2PL fit) are the training items' parameters.
    State: ``theta_`` (last estimate), ``best_theta_``, ``threshold_`` (the capacity the epoch's
    items are chosen at) and ``history_`` (one dict per epoch).
    """

    def __init__(self, difficulty, min_items: int = MIN_ITEMS, step: float = THRESHOLD_STEP,
                 prior_sd: float = 1.0, lower: float = -math.inf, upper: float = 0.0, start: str = "pudf"):
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        self.difficulty = np.asarray(difficulty, dtype=np.float64)
        self.min_items = min_items
        self.step = step
        self.prior_sd = prior_sd
        self.lower = lower
        self.upper = upper
        self.start = start
        self.theta_: float | None = None
        # "pudf": PUDF's prev_cap = -5 and cur_cap = 0, so a first estimate at or below -5 counts as
        # no progress and trains at capacity 0.1. "easiest": no floor, the first estimate always
        # improves and the threshold is theta itself (the min_items easiest rows for a weak learner).
        self.best_theta_ = PUDF_START[0] if start == "pudf" else -math.inf
        self.threshold_: float | None = None
        self.history_: list[dict] = []

    def estimate_theta(self, probe_responses, probe_difficulty, probe_discrimination=None) -> float:
        """MAP ability (N(0, prior_sd^2) prior) from one model's 1/0 answers on the probe items."""
        responses = np.asarray(probe_responses, dtype=np.float64)
        responses = np.where(responses < 0, 0.0, responses)  # PUDF's -1/+1 answers read as 0/1
        theta, _ = estimate_theta(responses, probe_difficulty, probe_discrimination, prior_sd=self.prior_sd)
        return float(theta)

    def update(self, theta: float) -> float:
        """Take a new ability estimate; return the threshold for this epoch. An improvement sets
        the threshold to theta; otherwise the threshold rises by ``step`` (PUDF's rule)."""
        if not math.isfinite(theta):
            raise ValueError(f"theta must be finite, got {theta}")
        improved = theta > self.best_theta_
        if improved:
            self.best_theta_ = float(theta)
            self.threshold_ = float(theta)
        else:  # the first epoch starts from PUDF's cur_cap (only "pudf" can fail to improve there)
            current = self.threshold_ if self.threshold_ is not None else PUDF_START[1]
            self.threshold_ = float(current + self.step)
        self.theta_ = float(theta)
        items = self.items()
        self.history_.append({"epoch": len(self.history_), "theta": float(theta), "improved": bool(improved),
                              "threshold": self.threshold_, "items": len(items)})
        return self.threshold_

    def items(self) -> np.ndarray:
        """The current epoch's items, easiest first (all of them before the first update)."""
        if self.threshold_ is None:
            return _easiest_first(self.difficulty)
        return epoch_items(self.difficulty, self.threshold_, self.min_items, self.lower, self.upper)

    def step_epoch(self, probe_responses, probe_difficulty, probe_discrimination=None) -> np.ndarray:
        """Estimate theta from the probe, update the threshold and return the epoch's items."""
        self.update(self.estimate_theta(probe_responses, probe_difficulty, probe_discrimination))
        return self.items()


class CurriculumSampler(Sampler):
    """Dataset indices, easiest first, for a ``torch.utils.data.DataLoader`` (``sampler=``).

    ``difficulty`` (and optional ``stage``) are per dataset row, as ``tamis.load_selected``
    returns them. Without a scheduler every epoch yields all rows with a finite difficulty in
    (stage, difficulty) order; with a :class:`DDSMAE` it yields the rows admitted at the last
    :meth:`update`. ``shuffle`` shuffles rows within each stage (stages stay in order), seeded by
    ``seed`` and the epoch (see :meth:`set_epoch`). ``epoch_size`` fixes how many indices an
    epoch yields (cycling the admitted rows), for trainers that plan steps per epoch up front.
    """

    def __init__(self, difficulty, stage=None, scheduler: DDSMAE | None = None, shuffle: bool = False,
                 seed: int = 0, epoch_size: int | None = None):
        self.difficulty = np.asarray(difficulty, dtype=np.float64)
        self.stage = None if stage is None else np.asarray(stage, dtype=np.int64)
        if self.stage is not None and self.stage.shape != self.difficulty.shape:
            raise ValueError("stage and difficulty must have one value per row")
        if scheduler is not None and len(scheduler.difficulty) != len(self.difficulty):
            raise ValueError("the scheduler's difficulties must be the sampler's rows")
        self.scheduler = scheduler
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_size = epoch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch number seeds the shuffle (Hugging Face and accelerate call this)."""
        self.epoch = int(epoch)

    def update(self, probe_responses, probe_difficulty, probe_discrimination=None) -> int:
        """DDS-MAE: estimate the model's ability from its probe answers and admit the items
        for the next epoch. Returns how many rows the epoch admits."""
        if self.scheduler is None:
            raise ValueError("update needs a DDSMAE scheduler (CurriculumSampler(..., scheduler=DDSMAE(b)))")
        self.scheduler.step_epoch(probe_responses, probe_difficulty, probe_discrimination)
        return len(self._admitted())

    def _admitted(self) -> np.ndarray:
        if self.scheduler is None:
            return np.flatnonzero(np.isfinite(self.difficulty))
        return self.scheduler.items()

    def indices(self) -> np.ndarray:
        """This epoch's indices, in the order the sampler yields them."""
        admitted = self._admitted()
        stage = None if self.stage is None else self.stage[admitted]
        order = admitted[np.lexsort([admitted, self.difficulty[admitted]] + ([stage] if stage is not None else []))]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            if self.stage is None:
                order = rng.permutation(order)
            else:
                groups = self.stage[order]
                order = np.concatenate([rng.permutation(order[groups == s]) for s in np.unique(groups)]) \
                    if len(order) else order
        if self.epoch_size is not None and len(order):
            order = np.resize(order, self.epoch_size)  # cycles the admitted rows
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.epoch_size if self.epoch_size is not None else len(self._admitted())


def lm_probe_answers(model, examples, threshold: float, batch_tokens: int = 16_384):
    """A causal LM's 1/0 answers on encoded probe rows, judged as the ``irt`` selector's LM crowd
    was: right when the mean loss over the row's scored tokens is under ``threshold``; NaN for a
    row with no scored token. Runs in eval mode and restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        return loss_answers(mean_token_loss(model, examples, batch_tokens=batch_tokens), threshold)
    finally:
        model.train(was_training)


def hf_callback(sampler: CurriculumSampler, probe: Callable):
    """A Hugging Face ``TrainerCallback`` that runs DDS-MAE at the start of every epoch:
    ``probe(model)`` returns (answers, difficulty[, discrimination]) on the probe set."""
    from transformers import TrainerCallback

    class DDSMAECallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            sampler.update(*probe(model))
            return control

    return DDSMAECallback()


__all__ = ["DDSMAE", "MIN_ITEMS", "PUDF_START", "STARTS", "THRESHOLD_STEP", "CurriculumSampler", "epoch_items", "hf_callback"]
