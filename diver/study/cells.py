"""The pretraining grid of a study: cells, their folder names, their DAG wildcards.

A study's ``grid`` is a list of blocks, each the product of its value lists (so a
block of single values is one explicit cell); SPEC §3's sparse grid is several such
blocks.  A cell is (family, patch, size, data, epochs) where *data* is a nested data
fraction, optionally of a nested subset of training subjects.  The Snakefile, the
launcher and the scaling collection all name cells through this module, so a cell's
folder is spelled in one place::

    <results>/pretrain/<family>/<patch>/<size>/<data>_e<epochs>/
    data = f<fraction>            e.g. f0.5
         | s<subjects>_f<fraction>  e.g. s4_f1.0   (the subject sweep)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from diver.config import GridBlock, StudyConfig


def data_label(fraction: float, subjects: int | None = None) -> str:
    """The data part of a cell's folder name: ``f0.5``, or ``s4_f1.0`` in a subject sweep."""
    label = f"f{float(fraction)!r}"
    return label if subjects is None else f"s{subjects}_{label}"


CELL_PATTERN = "{family}/{patch}/{size}/{data}_e{epochs}"
"""A cell's key with the DAG's wildcards as fields: the one spelling of a cell's folder
(``diver.study.layout`` puts it under ``pretrain/``; the rule files match on it)."""


def cell_key(
    family: str, patch: str, size: str, fraction: float, epochs: int, subjects: int | None = None
) -> str:
    """``family/patch/size/data_eE``, e.g. ``mixed/1s/debug/f0.5_e2``."""
    data = data_label(fraction, subjects)
    return CELL_PATTERN.format(family=family, patch=patch, size=size, data=data, epochs=epochs)


@dataclass(frozen=True, order=True)
class Cell:
    """One pretraining run of the grid."""

    family: str
    patch: str
    size: str
    fraction: float
    epochs: int
    subjects: int | None = None
    read_epochs: tuple[int, ...] = ()

    @property
    def data(self) -> str:
        """The data part of the folder name (``f0.5`` or ``s4_f1.0``)."""
        return data_label(self.fraction, self.subjects)

    @property
    def key(self) -> str:
        """``family/patch/size/data_eE``: the cell's folder under ``pretrain/``."""
        return cell_key(
            self.family, self.patch, self.size, self.fraction, self.epochs, self.subjects
        )

    def wildcards(self) -> dict[str, str]:
        """The values of the DAG's {family} {patch} {size} {data} {epochs} wildcards."""
        return {
            "family": self.family,
            "patch": self.patch,
            "size": self.size,
            "data": self.data,
            "epochs": str(self.epochs),
        }

    def pretrain_args(self) -> list[str]:
        """The ``diver pretrain`` flags that select this cell."""
        args = [
            "--family", self.family,
            "--size", self.size,
            "--patch", self.patch,
            "--data-fraction", repr(self.fraction),
            "--epochs", str(self.epochs),
        ]
        if self.subjects is not None:
            args += ["--subjects", str(self.subjects)]
        return args


def expand_block(block: GridBlock) -> list[Cell]:
    return [
        Cell(family, patch, size, fraction, epochs, subjects, block.read_epochs)
        for family, patch, size, fraction, subjects, epochs in itertools.product(
            block.family, block.patch, block.size, block.fraction, block.subjects,
            block.epochs,
        )
    ]


def grid_cells(study: StudyConfig) -> list[Cell]:
    """Every distinct cell of the study, in a stable order.

    A cell listed by two blocks runs once; its ``read_epochs`` are the union.
    """
    merged: dict[tuple, Cell] = {}
    for block in study.grid:
        for cell in expand_block(block):
            ident = (cell.family, cell.patch, cell.size, cell.fraction, cell.epochs,
                     cell.subjects)
            if ident in merged:
                reads = sorted(set(merged[ident].read_epochs) | set(cell.read_epochs))
                cell = Cell(*ident[:5], cell.subjects, tuple(reads))
            merged[ident] = cell
    return sorted(merged.values(), key=lambda c: (c.family, c.patch, c.size, c.subjects or 0,
                                                  c.fraction, c.epochs))


def find_cell(study: StudyConfig, wildcards: dict[str, str]) -> Cell:
    """The cell a set of DAG wildcards names (a KeyError when the grid has none)."""
    for cell in grid_cells(study):
        if cell.wildcards() == {k: str(wildcards[k]) for k in cell.wildcards()}:
            return cell
    raise KeyError(f"no grid cell matches {dict(wildcards)}")


def finetune_cells(study: StudyConfig) -> list[Cell]:
    """The pretrained cells the study fine-tunes (``finetune.cells``; ``all`` = the grid)."""
    from diver.config import ConfigError

    cells = grid_cells(study)
    wanted = study.finetune.cells
    if "all" in wanted:
        return cells
    by_key = {c.key: c for c in cells}
    unknown = [key for key in wanted if key not in by_key]
    if unknown:
        raise ConfigError(
            f"finetune.cells: {unknown} are not cells of the grid; cells look like "
            f"{cells[0].key!r}"
        )
    return [by_key[key] for key in wanted]
