"""The report's sweep section: each sweep's trials and choice, and the muP transfer check.

Reads only files (``hpsearch/<family>/<patch>/best.yaml``, written by ``diver hpsearch
run`` with every finished trial in it, and ``hpsearch/transfer/transfer.json`` with its
``transfer.png``), so the report needs neither Optuna nor the journal.  Absent files are
said so in the page; files that exist but cannot be read are a :class:`ReportError`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from diver.report.html import esc, figure, fmt_number, note, table
from diver.report.sections import ReportError


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"{path}: not a readable sweep result ({exc})") from exc
    if not isinstance(data, dict) or "lr" not in data or "trials" not in data:
        raise ReportError(f"{path}: not a sweep result (no lr / trials)")
    return data


def _trials_figure(best: dict[str, Any]) -> bytes:
    """Each finished trial at its (lr, weight decay), coloured by its last validation
    loss; pruned trials hollow, the choice starred."""
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    trials = [t for t in best["trials"] if t.get("val_loss") is not None]
    finite = [t for t in trials if math.isfinite(float(t["val_loss"]))]
    if finite:
        losses = [float(t["val_loss"]) for t in finite]
        complete = [t for t in finite if t["state"] == "COMPLETE"]
        pruned = [t for t in finite if t["state"] != "COMPLETE"]
        lo, hi = min(losses), max(losses)
        if complete:
            points = ax.scatter(
                [t["lr"] for t in complete],
                [t["weight_decay"] for t in complete],
                c=[float(t["val_loss"]) for t in complete],
                vmin=lo, vmax=hi, cmap="viridis_r", s=45, label="complete",
            )  # fmt: skip
            fig.colorbar(points, ax=ax, label="validation loss")
        if pruned:
            ax.scatter(
                [t["lr"] for t in pruned], [t["weight_decay"] for t in pruned],
                facecolors="none", edgecolors="grey", s=45, label="pruned",
            )  # fmt: skip
    ax.scatter([best["lr"]], [best["weight_decay"]], marker="*", s=220, c="red", label="best")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("weight decay")
    ax.set_title(f"{best['family']} / {best['patch']}: {len(best['trials'])} trials", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _sweep_block(path: Path) -> str:
    best = _read_yaml(path)
    states = [t["state"] for t in best["trials"]]
    head = (
        f"<h3>{esc(best['family'])} / {esc(best['patch'])}</h3>"
        f"<p>Chosen: lr <b>{esc(fmt_number(best['lr']))}</b>, weight decay "
        f"<b>{esc(fmt_number(best['weight_decay']))}</b> (trial {esc(best['trial'])}, "
        f"validation loss {esc(fmt_number(best['val_loss']))}). {esc(best['method'])} over "
        f"{len(states)} finished trials ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned) at {esc(best['size'])}, {esc(best['epochs'])} "
        f"epoch(s), data fraction {esc(best['fraction'])}; Optuna study "
        f"<code>{esc(best['study'])}</code> in <code>{esc(best['journal'])}</code>.</p>"
    )
    rows = sorted(
        best["trials"],
        key=lambda t: (t["state"] != "COMPLETE", t["val_loss"] if t["val_loss"] is not None
                       else math.inf),
    )  # fmt: skip
    listing = table(
        rows,
        [("number", "trial"), ("lr", "lr"), ("weight_decay", "weight decay"),
         ("state", "state"), ("last_step", "last step"), ("val_loss", "val loss")],
        text_columns=("state",),
    )  # fmt: skip
    plot = figure(
        _trials_figure(best),
        f"Sweep trials of {best['family']} / {best['patch']}",
        alt=f"sweep of {best['family']} {best['patch']}",
        source=str(path),
    )
    return head + f'<div class="row">{plot}<div>{listing}</div></div>'


def _transfer_block(result: Path) -> str:
    try:
        summary = json.loads(result.read_text())
        verdicts = summary["verdicts"]
        config = summary["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{result}: not a transfer check result ({exc})") from exc
    png = result.with_name("transfer.png")
    rows = []
    for verdict in verdicts.values():
        rows.append(
            {
                "spectral_norm": verdict["spectral_norm"],
                "param": "muP" if verdict["parametrisation"] == "mup" else "standard",
                "best": ", ".join(
                    f"{size} {fmt_number(lr)}" for size, lr in verdict["best_lr"].items()
                ),
                "spread": verdict["spread_grid_steps"],
                "verdict": "within one grid step" if verdict["transfers"] else "drifts",
            }
        )
    intro = (
        f"<p>The same {len(config['lrs'])} learning rates (at most 2x apart) at "
        f"{', '.join(map(esc, config['sizes']))}, {esc(config['steps'])} steps, seeds "
        f"{esc(list(config['seeds']))}, muP beside standard parametrisation; each point the "
        "fixed validation loss after training. muP should put every width's best learning "
        "rate within one grid step; standard parametrisation is expected to drift. "
        "<code>spectral_norm: forward</code> (the authors' code) is not width-stable per the "
        "coordinate check, so the width-flat <code>ortho</code> is shown too.</p>"
    )
    listing = table(
        rows,
        [("spectral_norm", "spectral_norm"), ("param", "parametrisation"),
         ("best", "best lr per width"), ("spread", "spread (grid steps)"),
         ("verdict", "verdict")],
        text_columns=("spectral_norm", "param", "best", "verdict"),
    )  # fmt: skip
    mup_ok = all(v["transfers"] for v in verdicts.values() if v["parametrisation"] == "mup")
    verdict = (
        note("muP: the best learning rate agrees across widths within one grid step.", kind="ok")
        if mup_ok
        else note("muP: the best learning rate does NOT agree across widths (see the table).")
    )
    plot = ""
    if png.is_file():
        plot = figure(
            png.read_bytes(),
            "Validation loss against learning rate, a curve per width (dotted: each width's "
            "best), muP and standard parametrisation",
            alt="muP transfer check",
            source=str(png),
        )
    return "<h3>muP transfer check</h3>" + intro + verdict + listing + plot


def hpsearch_section(folder: Path | None) -> str:
    """Every sweep under ``folder`` (``<results>/hpsearch``) and the transfer check."""
    if folder is None or not Path(folder).is_dir():
        return note(
            "No hyper-parameter sweep in this study (no family says lr: from_sweep) and no "
            "transfer check."
        )
    folder = Path(folder)
    parts = [_sweep_block(p) for p in sorted(folder.glob("*/*/best.yaml"))]
    if not parts:
        parts.append(note("No sweep has finished yet (no hpsearch/<family>/<patch>/best.yaml)."))
    transfer = folder / "transfer" / "transfer.json"
    if transfer.is_file():
        parts.append(_transfer_block(transfer))
    else:
        parts.append(
            note(
                "The muP transfer check has not run: hpsearch.transfer.enabled in the config, "
                "or diver hpsearch transfer --out <results>/hpsearch/transfer."
            )
        )
    return "".join(parts)
