"""Which sweeps a study runs, what identifies each, and where its files live.

A sweep is one (family, patch) of the grid whose family takes its ``lr`` or
``weight_decay`` from the sweep (``from_sweep``, also per patch under ``by_patch``).  Its
folder ``<results>/hpsearch/<family>/<patch>/`` holds::

    journal.log          Optuna's journal storage (every sweep setting's study)
    best.yaml            the chosen pair, which the grid's cells read
    trials/<fp>/<key>/   one `diver pretrain` run per trial (checkpoints, logs)

The sweep's *fingerprint* hashes everything that changes what a trial measures (the
``hpsearch`` settings, the family's data, the ``pretrain`` settings other than lr and
weight decay, the model options, the corpus), and names its Optuna study: a changed
sweep starts a new study in the same journal, a restarted one continues its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from diver.config import StudyConfig, sweep_dir

KEYS = ("lr", "weight_decay")
JOURNAL = "journal.log"
BEST = "best.yaml"
TRIALS = "trials"


@dataclass(frozen=True)
class Sweep:
    """One sweep: a family at one patch length, under a study config."""

    study: StudyConfig
    family: str
    patch: str

    @property
    def folder(self) -> Path:
        return sweep_dir(self.study.results_dir, self.family, self.patch)

    @property
    def journal(self) -> Path:
        return self.folder / JOURNAL

    @property
    def best(self) -> Path:
        return self.folder / BEST

    @property
    def tuned(self) -> tuple[str, ...]:
        """The keys the sweep tunes: those the family takes ``from_sweep`` at this patch
        (both when it takes neither: a sweep run by hand to look)."""
        return self.study.families[self.family].swept(self.patch) or KEYS

    @property
    def fixed(self) -> dict[str, float]:
        """The keys the sweep holds at the family's typed values, so the tuned one is
        found with the other the cells will use."""
        typed = self.study.families[self.family].typed(self.patch, self.study.pretrain)
        return {k: v for k, v in typed.items() if k not in self.tuned}

    def pair(self, params: dict[str, float]) -> tuple[float, float]:
        """(lr, weight_decay) of a trial: its tuned parameters and the fixed ones."""
        values = {**self.fixed, **params}
        return float(values["lr"]), float(values["weight_decay"])

    def fingerprint(self, corpus: str | Path) -> str:
        """Hash of what a trial's loss depends on, apart from the pair it tries."""
        family = self.study.families[self.family]
        pretrain = {
            k: v
            for k, v in self.study.pretrain.identity().items()
            if k not in ("lr", "weight_decay")
        }
        hp = asdict(self.study.hpsearch)
        hp.pop("transfer")
        blob = {
            "hpsearch": hp,
            "family": {"modalities": sorted(family.modalities), "datasets": family.datasets},
            "patch": self.patch,
            "tuned": list(self.tuned),
            "fixed": self.fixed,
            "pretrain": pretrain,
            "model": dict(self.study.model),
            "corpus": str(Path(corpus).resolve()),
        }
        text = json.dumps(blob, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def study_name(self, corpus: str | Path) -> str:
        """The Optuna study's name: the study, family, patch and fingerprint."""
        return f"{self.study.study}.{self.family}.{self.patch}.{self.fingerprint(corpus)}"

    def trials_dir(self, corpus: str | Path) -> Path:
        return self.folder / TRIALS / self.fingerprint(corpus)


def trial_key(lr: float, weight_decay: float) -> str:
    """A trial's folder name, from its pair: the same pair (a trial re-run after the sweep
    was killed) finds its own checkpoints and resumes instead of starting over."""
    return f"lr{lr:.6e}_wd{weight_decay:.6e}"


def sweeps(study: StudyConfig) -> list[tuple[str, str]]:
    """(family, patch) of every sweep: the grid's pairs whose family uses ``from_sweep``."""
    from diver.study.cells import grid_cells

    pairs = {(c.family, c.patch) for c in grid_cells(study)}
    return sorted((f, p) for f, p in pairs if study.families[f].uses_sweep(p))
