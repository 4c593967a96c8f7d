"""Write ``datablations_182.csv`` from Muennighoff et al.'s notebook (see README.md).

Usage: ``python tests/data/make_datablations_csv.py DATABLATIONS_CHECKOUT [OUT]``.

The 182 points of the published data-constrained fit are the ones the notebook's
"custom data loading with outliers removed" cell (cell 26 of
``utils/parametric_fit.ipynb``) printed as ``name N/1e9 D/1e9 U_D/1e9 loss`` and its
fitting cell (cell 29, "Samples: 182") then used.  Reading that printed output, rather
than re-deriving sizes from the run names, keeps the authors' own parse of their
names (which is irregular: ``2b855b1b25`` is 2.8B parameters, 55B tokens, 1.25B
unique).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

NOTEBOOK = Path("utils") / "parametric_fit.ipynb"
CELL = 26
_NUM = r"[\d.e+-]+"
ROW = re.compile(rf"^(?P<name>\S+) (?P<n>{_NUM}) (?P<d>{_NUM}) (?P<u>{_NUM}) (?P<loss>{_NUM})$")


def rows(notebook: Path) -> list[dict[str, object]]:
    cell = json.loads(notebook.read_text())["cells"][CELL]
    text = "".join("".join(o.get("text", [])) for o in cell.get("outputs", []))
    out = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m is None:
            raise SystemExit(f"{notebook}: cell {CELL}: unexpected output line {line!r}")
        out.append(
            {
                "name": m["name"],
                "params": round(float(m["n"]) * 1e9),
                "tokens": round(float(m["d"]) * 1e9),
                "unique_tokens": round(float(m["u"]) * 1e9),
                "loss": float(m["loss"]),
            }
        )
    if len(out) != 182:
        raise SystemExit(f"{notebook}: cell {CELL}: expected 182 points, read {len(out)}")
    return out


def main(argv: list[str]) -> int:
    checkout = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("datablations_182.csv")
    data = rows(checkout / NOTEBOOK)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    tmp.replace(out)
    print(f"wrote {len(data)} points to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
