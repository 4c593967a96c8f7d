"""What a pretraining run leaves in its folder, and how a rerun recognises it.

Rank 0 writes ``train_log.csv`` and ``val_log.csv`` (appended per step, cut back to the
checkpoint on resume), ``run_config.json`` (the settings and their identity),
``ds_config.json``, ``loss_curve.png`` and, last, ``metrics.json``: its presence beside
``model.pt`` with a matching identity makes a rerun a no-op (:func:`completed`), and a
folder of another identity is refused (:func:`check_identity`) rather than mixed.  All
but the two logs are written atomically (``diver.atomic``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diver.atomic import replacing, write_text_atomic
from diver.train.errors import PretrainError

TRAIN_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_time",
    "loss_fft",
    "loss_stft",
    "lr",
    "grad_norm",
    "tokens",
    "tokens_per_s",
    "step_s",
    "loader_wait_s",
    "model_flops",
)
VAL_COLUMNS = (
    "epoch",
    "step",
    "tokens",
    "val_loss",
    "val_loss_time",
    "val_loss_fft",
    "val_loss_stft",
)


class CsvLog:
    """An append-only CSV of one row per step, written by rank 0 (flushed per row).

    On resume, :meth:`truncate` keeps the rows up to the checkpoint's step (a kill after
    the checkpoint leaves later rows, possibly a partial last line) so the resumed run
    appends exactly where the checkpoint left off.
    """

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self._fh: Any = None

    def rows(self) -> list[dict[str, str]]:
        """The complete rows; a log written by an older diver, with a subset of today's
        columns, keeps its rows with the new columns ``nan`` (never dropped on resume)."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            written = tuple(reader.fieldnames or ())
            if not written or not set(written) <= set(self.columns):
                return []
            rows = [r for r in reader if None not in r.values() and None not in r]
        added = {c: "nan" for c in self.columns if c not in written}
        return [{**row, **added} for row in rows]

    def truncate(self, max_step: int) -> list[dict[str, str]]:
        """Keep complete rows with ``step <= max_step`` (all gone for a fresh start)."""
        kept = []
        for row in self.rows():
            try:
                step = int(row["step"])
                for column in self.columns:
                    float(row[column])
            except (TypeError, ValueError):
                continue  # a line cut short by a kill
            if step <= max_step:
                kept.append(row)
        lines = [",".join(self.columns)] + [",".join(row[c] for c in self.columns) for row in kept]
        write_text_atomic(self.path, "\n".join(lines) + "\n")
        return kept

    def append(self, row: Mapping[str, Any]) -> None:
        if self._fh is None:
            self._fh = self.path.open("a", newline="")
        self._fh.write(",".join(_fmt(row[c]) for c in self.columns) + "\n")
        self._fh.flush()

    def sync(self) -> None:
        """Make the rows so far durable (before a checkpoint claims them)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fmt(value: Any) -> str:
    """``repr`` of floats: the shortest string that reads back to the same double."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class RunLogs:
    """The run's two logs and their rows so far (rank 0: for the plot, the per-epoch
    table and replaying a resumed curve into MLflow; other ranks keep none)."""

    train: CsvLog
    val: CsvLog
    train_rows: list[dict[str, str]]
    val_rows: list[dict[str, str]]

    @classmethod
    def open(cls, out: Path, *, keep_until: int, truncate: bool) -> RunLogs:
        """The logs of ``out``; with ``truncate`` (rank 0) cut back to ``keep_until``
        (-1: a fresh start, every row gone)."""
        train = CsvLog(out / "train_log.csv", TRAIN_COLUMNS)
        val = CsvLog(out / "val_log.csv", VAL_COLUMNS)
        if not truncate:
            return cls(train, val, [], [])
        return cls(train, val, train.truncate(keep_until), val.truncate(keep_until))

    def append_train(self, row: Mapping[str, Any]) -> None:
        self.train.append(row)
        self.train_rows.append({k: str(v) for k, v in row.items()})

    def append_val(self, row: Mapping[str, Any]) -> None:
        self.val.append(row)
        self.val_rows.append({k: str(v) for k, v in row.items()})

    def sync(self) -> None:
        self.train.sync()
        self.val.sync()

    def close(self) -> None:
        self.train.close()
        self.val.close()


def val_by_epoch(
    val_rows: list[Mapping[str, str]], steps_per_epoch: int, unique_tokens: float
) -> list[dict[str, float]]:
    """Validation loss at each epoch end (SPEC §3 reads one long run at several epochs).

    Tokens are those of that many epochs over the cell's data, so each row is a
    point (N, D = e x U_D, U_D, L) of the scaling grid.
    """
    rows: dict[int, dict[str, float]] = {}
    for row in val_rows:
        step = int(row["step"]) if row.get("step") else 0
        if step <= 0 or step % steps_per_epoch or not row.get("val_loss"):
            continue  # not an epoch end (the start, or a mid-epoch validation)
        epoch = step // steps_per_epoch
        rows[epoch] = {
            "epoch": epoch,
            "tokens": epoch * unique_tokens,
            "val_loss": float(row["val_loss"]),
        }
    return [rows[e] for e in sorted(rows)]


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def plot_losses(
    train_rows: list[Mapping[str, Any]], val_rows: list[Mapping[str, Any]], path: Path, title: str
) -> None:
    """Training and validation loss against step, as a PNG (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train_rows:
        ax.plot(
            [int(r["step"]) for r in train_rows],
            [float(r["loss"]) for r in train_rows],
            label="train",
            lw=1,
        )
    if val_rows:
        ax.plot(
            [int(r["step"]) for r in val_rows],
            [float(r["val_loss"]) for r in val_rows],
            "o-",
            label="validation",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def completed(out: Path, identity: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds finished outputs of the same settings (then a no-op).

    Finished outputs of *different* settings are an error: overwriting them silently
    would mix two cells in one folder.
    """
    metrics = out / "metrics.json"
    if not metrics.exists() or not (out / "model.pt").exists():
        return False
    check_identity(out, identity)
    return True


def identity_changes(out: Path, identity: Mapping[str, Any]) -> list[str]:
    """The identity keys whose value ``out``'s ``run_config.json`` records differently,
    as ``key: old there, new now`` (empty when there is no record or it matches)."""
    path = out / "run_config.json"
    if not path.exists():
        return []
    try:
        recorded = json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError) as exc:
        raise PretrainError(
            f"{path} is unreadable ({exc}); delete it or use another --out"
        ) from exc
    current = json.loads(json.dumps(identity))
    diff = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    return [f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} now" for k in diff]


SUPERSEDED_SUFFIX = ".superseded-"
# A submitted SLURM job's record (diver.launch.slurm.JOB_FILE): its folder is never moved
LIVE_JOB_FILE = ".slurm_job.json"


def supersede(out: Path, identity: Mapping[str, Any]) -> Path | None:
    """Move a cell folder made with other settings aside, so the cell reruns afresh.

    Why: when a cell's settings change (a sweep picks another learning rate, a typed
    value is edited), Snakemake reruns the cell, and its folder still holds the old
    run's checkpoints and logs, which :func:`check_identity` refuses to mix with the
    new run.  The old folder is renamed to ``<out>.superseded-<UTC time>`` beside it
    -- never deleted: it holds results this run did not write.  A folder whose SLURM
    job record is still there is left alone (its job may still be running: cancel it,
    or remove the record once it has ended).  Returns the new name, or None when
    nothing was moved.
    """
    out = Path(out)
    changes = identity_changes(out, identity)
    if not changes:
        return None
    if (out / LIVE_JOB_FILE).exists():
        raise PretrainError(
            f"{out} belongs to a run with other settings ({'; '.join(changes)}) and holds a "
            f"SLURM job record ({LIVE_JOB_FILE}): cancel that job if it still runs, then "
            "remove the record to let the cell start afresh"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = out.with_name(f"{out.name}{SUPERSEDED_SUFFIX}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}{SUPERSEDED_SUFFIX}{stamp}-{n}")
    out.rename(target)
    return target


def check_identity(out: Path, identity: Mapping[str, Any]) -> None:
    """Refuse a folder whose ``run_config.json`` records another identity."""
    diff = identity_changes(out, identity)
    if diff:
        raise PretrainError(
            f"{out} belongs to a run with other settings ({'; '.join(diff)}); use another "
            "--out, delete the folder, or pass --supersede to move it aside"
        )
