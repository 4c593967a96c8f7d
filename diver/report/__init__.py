"""The study's HTML report (SPEC's whole pipeline on one page).

- :mod:`diver.report.html`: escaped tables, embedded PNGs, the page (self-contained);
- :mod:`diver.report.figures`: loss curves drawn from the cells' logs;
- :mod:`diver.report.sections`: corpus, grid, curves, scaling law, fine-tuning;
- :mod:`diver.report.finetune`: reading ``diver finetune``'s metrics;
- :mod:`diver.report.paper`: the paper's Table 8 and downstream numbers;
- :mod:`diver.report.build`: assembling and writing ``index.html``;
- :mod:`diver.report.cli`: ``diver report`` (``register(subparsers)``).
"""

from diver.lazy import lazy_exports

__all__ = ["ReportInputs", "build_report", "write_report"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "build"))
