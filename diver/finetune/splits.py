"""Train / validation / test splits of a task set's trials (a task file's ``split``).

The test side keeps whole *units* (recordings, subjects, or single trials) out of
training, so a score measures transfer to unseen runs or people, not memory of
neighbouring trials.  ``folds = k > 1`` is k-fold cross-validation over units: units
are shuffled (seeded) and dealt round-robin into k folds, each fold the test set once;
with ``shuffle: false`` each fold is instead a contiguous run of the sorted units
(Neuroprobe's unshuffled KFold: trials in time order, the first half then the second).
``folds = 1`` holds out the units named in ``test`` (glob patterns), or a seeded
random ``test_fraction`` of them.  Validation is then drawn from the training side,
by ``val_by`` units (default: the same unit), ``val_fraction`` of them and at least
one.  Trial-level draws are stratified by class so every split keeps the class mix.

A *fixed* split (``train``, ``val`` and ``test`` all given: the authors' protocols)
takes the units by name (glob patterns) or by index ranges of the units sorted by name
(``[0, 70]`` is the first 70, as the authors' ``sorted(os.listdir(root))[:70]``);
units in none of the three are left out, and a unit in two is an error.  Trial units
sort by recording, then by trial number.

Everything is a function of the task set and ``split.seed``: training seeds do not
move trials between splits, so scores of different seeds and models are comparable.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np

from diver.finetune.tasks import SplitConfig, TaskError, Units, is_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """Trial positions of one split; ``index`` numbers the folds from 0."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _deal(
    units: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator, stratify: bool
) -> list[list[str]]:
    """Distinct units shuffled and dealt round-robin into k groups.

    Stratified (trial units): each class is shuffled and dealt in turn, continuing
    the round-robin, so group sizes differ by at most one and classes are spread.
    """
    groups: list[list[str]] = [[] for _ in range(k)]
    if stratify:
        slot = 0
        for cls in np.unique(labels):
            members = units[labels == cls]
            for unit in members[rng.permutation(len(members))]:
                groups[slot % k].append(str(unit))
                slot += 1
        return groups
    distinct = np.array(sorted({str(u) for u in units}), dtype=object)
    for i, unit in enumerate(distinct[rng.permutation(len(distinct))]):
        groups[i % k].append(str(unit))
    return groups


def _contiguous(units: np.ndarray, k: int) -> list[list[str]]:
    """Sorted distinct units cut into k contiguous runs (sizes differ by at most one,
    the larger first, as scikit-learn's KFold)."""
    distinct = sorted({str(u) for u in units}, key=_sort_key)
    size, extra = divmod(len(distinct), k)
    runs, start = [], 0
    for i in range(k):
        stop = start + size + (1 if i < extra else 0)
        runs.append(distinct[start:stop])
        start = stop
    return runs


def _take(
    units: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator, what: str
) -> set[str]:
    """A random ``fraction`` of the distinct units (at least one, never all)."""
    distinct = sorted({str(u) for u in units})
    if len(distinct) < 2:
        raise TaskError(f"{what}: needs at least two units to split, found {distinct}")
    n = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    if len(distinct) == len(units):  # one trial per unit: stratified by class
        return {str(u) for u in _stratified(units, labels, n, rng)}
    return {str(u) for u in np.array(distinct, dtype=object)[rng.permutation(len(distinct))[:n]]}


def _stratified(
    units: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` trials with the classes in proportion (largest remainders)."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts / counts.sum() * n
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take))[: n - int(take.sum())]:
        take[i] += 1
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = units[labels == cls]
        chosen.extend(members[rng.permutation(len(members))[:k]])
    return np.asarray(chosen, dtype=object)


def make_folds(
    test_units: np.ndarray,
    val_units: np.ndarray,
    labels: np.ndarray,
    split: SplitConfig,
    *,
    source: str = "task",
) -> list[Fold]:
    """The folds of ``split`` over trials with the given units (one entry per trial)."""
    test_units = np.asarray(test_units, dtype=object)
    val_units = np.asarray(val_units, dtype=object)
    labels = np.asarray(labels)
    if split.fixed:
        return [_fixed_fold(test_units, labels, split, source)]
    per_trial = split.by == "trial"
    distinct = sorted({str(u) for u in test_units})
    if split.test and is_range(split.test):
        raise TaskError(
            f"{source}: split.test as an index range needs train and val ranges too (a fixed split)"
        )
    if split.folds > 1:
        if split.folds > len(distinct):
            raise TaskError(
                f"{source}: split.folds {split.folds} exceeds the {len(distinct)} "
                f"{split.by} unit(s) {distinct if len(distinct) < 10 else ''}"
            )
        if split.shuffle:
            rng = np.random.default_rng([split.seed, 0])
            tests = _deal(test_units, labels, split.folds, rng, per_trial)
        else:
            tests = _contiguous(test_units, split.folds)
    elif split.test:
        chosen = {u for u in distinct if any(fnmatch.fnmatchcase(u, p) for p in split.test)}
        unmatched = [p for p in split.test if not any(fnmatch.fnmatchcase(u, p) for u in distinct)]
        if unmatched:
            raise TaskError(
                f"{source}: split.test patterns {unmatched} match no {split.by}; "
                f"{split.by}s: {distinct}"
            )
        if len(chosen) == len(distinct):
            raise TaskError(f"{source}: split.test takes every {split.by}; nothing is left")
        tests = [sorted(chosen)]
    else:
        rng = np.random.default_rng([split.seed, 0])
        tests = [sorted(_take(test_units, labels, split.test_fraction, rng, f"{source} test"))]
    folds = []
    for i, test in enumerate(tests):
        is_test = np.isin(test_units.astype(str), np.asarray(test, dtype=str))
        rest = np.flatnonzero(~is_test)
        rng = np.random.default_rng([split.seed, 1, i])
        try:
            val_set = _take(
                val_units[rest], labels[rest], split.val_fraction, rng, f"{source} fold {i} val"
            )
        except TaskError as exc:
            raise TaskError(
                f"{exc} (the training side of fold {i} has too few {split.val_unit} units; "
                "use a finer split.val_by)"
            ) from None
        is_val = np.isin(val_units[rest].astype(str), np.asarray(sorted(val_set), dtype=str))
        fold = Fold(i, train=rest[~is_val], val=rest[is_val], test=np.flatnonzero(is_test))
        for name in ("train", "val", "test"):
            present = np.unique(labels[getattr(fold, name)])
            if len(present) < len(np.unique(labels)):
                log.warning("%s fold %d: %s split lacks some classes", source, i, name)
        folds.append(fold)
    return folds


def _sort_key(unit: str) -> tuple[str, int]:
    """Units by name; a trial id ``recording#k`` by recording, then k as a number."""
    head, sep, tail = unit.rpartition("#")
    return (head, int(tail)) if sep and tail.isdigit() else (unit, -1)


def _select(distinct: list[str], units: Units, key: str, by: str, source: str) -> list[str]:
    if is_range(units):
        start, stop = units
        end = len(distinct) if stop is None else stop
        if end > len(distinct):
            raise TaskError(
                f"{source}: split.{key} [{start}, {stop}] reaches past the "
                f"{len(distinct)} {by}(s) found (first: {distinct[:3]}); point the task at "
                "the whole dataset, or give a split of its own"
            )
        return distinct[start:end]
    chosen = [u for u in distinct if any(fnmatch.fnmatchcase(u, p) for p in units)]
    unmatched = [p for p in units if not any(fnmatch.fnmatchcase(u, p) for u in distinct)]
    if unmatched:
        raise TaskError(f"{source}: split.{key} patterns {unmatched} match no {by}")
    return chosen


def _fixed_fold(units: np.ndarray, labels: np.ndarray, split: SplitConfig, source: str) -> Fold:
    """The one fold of a fixed split (see the module doc)."""
    distinct = sorted({str(u) for u in units}, key=_sort_key)
    named = {
        key: _select(distinct, getattr(split, key), key, split.by, source)
        for key in ("train", "val", "test")
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(named[a]) & set(named[b]))
        if both:
            raise TaskError(f"{source}: split.{a} and split.{b} share {split.by}(s) {both[:5]}")
    for key, chosen in named.items():
        if not chosen:
            raise TaskError(f"{source}: split.{key} selects no {split.by}")
    left = len(distinct) - sum(len(v) for v in named.values())
    if left:
        log.info("%s: %d %s(s) in no split are left out", source, left, split.by)
    as_text = units.astype(str)
    fold = Fold(
        0,
        train=np.flatnonzero(np.isin(as_text, named["train"])),
        val=np.flatnonzero(np.isin(as_text, named["val"])),
        test=np.flatnonzero(np.isin(as_text, named["test"])),
    )
    for name in ("train", "val", "test"):
        if len(np.unique(labels[getattr(fold, name)])) < len(np.unique(labels)):
            log.warning("%s: %s split lacks some classes", source, name)
    return fold
