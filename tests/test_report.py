"""The study report: one self-contained HTML file that renders in a real browser.

Built from real inputs: a corpus made by ``diver synth`` + the corpus stage (manifest,
QC and channel tables), a grid of cell outputs from a known law (:mod:`tests.grid_files`)
collected and fitted by the real ``diver scaling`` commands, and fine-tuning metrics
files.  The browser check runs Debian's ``chromium`` headless: it must decode every
embedded image and paint a page that is not blank.  Without chromium the check skips
on a user's machine and fails under CI (``CI=true``), where it must be installed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from diver.cli import main as diver_main
from diver.report.finetune import estimate, read_finetune
from diver.scaling import cli as scaling_cli
from diver.scaling.study import FIGURES, fit_study
from tests.conftest import build_synthetic_corpus, chromium
from tests.grid_files import write_grid

SIZES = ["debug", "debug-2x", "debug-4x"]
N_FIGURES = 1 + len(FIGURES)  # loss curves + the fit's three figures


def _summary(runs: list[dict[str, float]]) -> dict[str, dict]:
    """``diver finetune``'s per-model summary: mean, SEM (ddof 1) and n over runs."""
    out = {}
    for name in runs[0]:
        values = np.array([r[name] for r in runs])
        sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
        out[name] = {"mean": float(values.mean()), "sem": sem, "n": len(values)}
    return out


_RUNS = {
    "diver": [
        {"auroc": 0.95, "balanced_accuracy": 0.90},
        {"auroc": 0.97, "balanced_accuracy": 0.92},
        {"auroc": 0.96, "balanced_accuracy": 0.91},
    ],
    "scratch": [
        {"auroc": 0.70, "balanced_accuracy": 0.60},
        {"auroc": 0.80, "balanced_accuracy": 0.70},
    ],
    "linear": [{"auroc": 0.93, "balanced_accuracy": 0.88}],
}
#: A metrics.json in the layout ``diver finetune`` writes (diver/finetune/train.py).
FINETUNE = {
    "task": "synth_oscillation",
    "mode": "full",
    "pretrained": "results/pretrain/mixed/1s/debug/f1.0_e2/model.pt",
    "pretrained_cell": "mixed/1s/debug/f1.0_e2",
    "metrics": ["auroc", "balanced_accuracy"],
    "models": {m: {"summary": _summary(runs), "runs": runs} for m, runs in _RUNS.items()},
}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    build_synthetic_corpus(root, hours=0.1)

    paths = write_grid(root / "pretrain", SIZES, [0.5, 1.0], [1, 2])
    runs = root / "scaling" / "runs.csv"
    args = ["scaling", "collect", "--metrics", *map(str, paths), "--out", str(runs)]
    assert scaling_cli.main(args) == 0
    fit = root / "scaling" / "mixed" / "1s"
    fit_study(runs, fit, form="auto", where=["family=mixed", "patch=1s"], bootstrap=100)

    finetune = root / "finetune" / "synth" / "metrics.json"
    finetune.parent.mkdir(parents=True)
    finetune.write_text(json.dumps(FINETUNE))
    return {
        "root": root,
        "corpus": root / "corpus",
        "runs": runs,
        "fit": fit / "fit.json",
        "finetune": finetune,
    }


def _report(inputs: dict[str, Path], out: Path, *extra: str) -> int:
    return diver_main(
        [
            "report",
            "--corpus",
            str(inputs["corpus"]),
            "--runs",
            str(inputs["runs"]),
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def report(inputs: dict[str, Path]) -> Path:
    out = inputs["root"] / "report" / "index.html"
    code = _report(inputs, out, "--fits", str(inputs["fit"]), "--finetune", str(inputs["finetune"]))
    assert code == 0
    return out


class _Assets(HTMLParser):
    """Every image source and every element that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.fetching: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("script", "link", "iframe", "object", "embed", "video", "audio", "source"):
            self.fetching.append((tag, str(values)))
        for key in ("src", "href"):
            value = values.get(key) or ""
            if re.match(r"^[a-z]+://", value) or value.startswith("//"):
                self.fetching.append((tag, value))


def _grey(source: Path | io.BytesIO) -> np.ndarray:
    """A PNG decoded to grey levels in [0, 1] (matplotlib reads PNGs as floats)."""
    pixels = imread(source, format="png")
    return pixels[..., :3].mean(axis=-1) if pixels.ndim == 3 else pixels


def _headless(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            chromium("the report's browser check"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(cwd)},  # chromium writes its profile under HOME
    )


# --------------------------------------------------------------------- tests


def test_report_is_self_contained_and_every_image_decodes(report: Path) -> None:
    text = report.read_text()
    parser = _Assets()
    parser.feed(text)
    assert parser.fetching == []
    assert len(parser.images) == N_FIGURES
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = _grey(io.BytesIO(data))  # decodes every pixel; a truncated PNG raises
        assert min(pixels.shape) >= 200
        assert pixels.std() > 5 / 255  # a drawing, not an empty canvas
    assert not list(report.parent.glob("*.tmp-*"))


def test_report_holds_every_section(report: Path, inputs: dict[str, Path]) -> None:
    text = report.read_text()
    for anchor in ("summary", "corpus", "grid", "curves", "scaling", "finetune"):
        assert f'<section id="{anchor}">' in text
    # Corpus manifest and QC, from the real corpus.
    assert "synth_eeg" in text and "synth_ieeg" in text
    assert "sampling rate 64 Hz below min_sfreq 100 Hz" in text  # the quarantined recording
    # The grid: every cell's parameters and loss.
    for params in ("229,650", "728,850", "2,540,562"):
        assert params in text
    runs = np.genfromtxt(inputs["runs"], delimiter=",", names=True, dtype=None, encoding=None)
    for loss in runs["loss"]:
        assert f"{loss:.5f}" in text
    # The law: the form used and why, beside DIVER-1's Table 8.
    fit = json.loads(inputs["fit"].read_text())
    assert fit["form"] == "chinchilla"
    assert "Form: chinchilla" in text and "12 points &lt; 14" in text
    assert "DIVER-1 iEEG 1 s" in text and "19.22" in text and "57.06" in text
    # Fine-tuning: mean ± SEM over seeds, models and baselines.
    assert "0.960 ± 0.006 (n=3)" in text  # SEM of 0.95, 0.97, 0.96 = 0.01 / sqrt(3)
    assert "0.750 ± 0.050 (n=2)" in text and "0.930 (n=1)" in text
    assert "mixed/1s/debug/f1.0_e2" in text
    assert text.count(">baseline<") == 2 and "No fine-tuning configured" not in text


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    proc = _headless(
        f"--screenshot={shot}", "--window-size=1280,3000", report.as_uri(), cwd=tmp_path
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    page = _grey(shot)
    assert page.shape == (3000, 1280)
    assert page.std() > 20 / 255, "the screenshot is (nearly) one colour"
    assert (page < 200 / 255).mean() > 0.02, "almost nothing is drawn on the page"

    # The browser itself decoded every image: a copy of the page reports, once loaded,
    # how many images it has and how many failed (complete with zero natural width).
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
        " document.body.setAttribute('data-images', imgs.length + ':' + bad); });</script>"
    )
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    proc = _headless("--dump-dom", "--virtual-time-budget=10000", probe.as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-images="(\d+):(\d+)"', proc.stdout)
    assert found, proc.stdout[:500]
    assert (int(found[1]), int(found[2])) == (N_FIGURES, 0)


def test_report_without_fine_tuning_or_a_law_says_so(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    skipped = tmp_path / "fit" / "fit.json"
    skipped.parent.mkdir()
    runs = tmp_path / "few.csv"
    lines = inputs["runs"].read_text().splitlines()
    runs.write_text("\n".join(lines[:5]) + "\n")  # 4 points: too few for any law
    assert not fit_study(runs, skipped.parent, form="auto").fitted
    out = tmp_path / "index.html"
    assert _report(inputs, out, "--fits", str(skipped)) == 0
    text = out.read_text()
    assert "No scaling law fitted: no law fitted" in text and "4 points &lt; 10" in text
    assert "No fine-tuning configured." in text
    assert "numbers (SPEC §5)" in text


def test_report_inputs_that_cannot_be_used_are_named(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "index.html"
    missing = tmp_path / "nope" / "metrics.json"
    assert _report(inputs, out, "--finetune", str(missing)) == 2
    assert str(missing) in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"task": "x", "models": {}}')
    assert _report(inputs, out, "--finetune", str(broken)) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "no per-model metrics" in err
    assert not out.exists()


def test_finetune_estimates() -> None:
    """Per-seed lists get their mean and SEM here; given summaries are taken as they are."""
    est = estimate([0.6, 0.7, 0.8, 0.9])
    assert est is not None and est.n == 4
    assert est.mean == pytest.approx(0.75)
    assert est.sem == pytest.approx(np.std([0.6, 0.7, 0.8, 0.9], ddof=1) / 2)
    assert estimate({"mean": 0.5}) == estimate(0.5)
    assert estimate("n/a") is None and estimate(True) is None


def test_finetune_rows_name_task_mode_and_baselines(tmp_path: Path) -> None:
    path = tmp_path / "eegmmidb" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"diver": {"auroc": 0.8}, "linear_baseline": {"auroc": 0.7}}))
    rows = read_finetune(path)
    assert [(r["task"], r["model"], r["baseline"]) for r in rows] == [
        ("eegmmidb", "diver", False),
        ("eegmmidb", "linear_baseline", True),
    ]


def test_finetune_table_sets_the_papers_numbers_beside_ours(tmp_path: Path) -> None:
    """A benchmark task (its task file carries the paper's results) gets '<model>
    (paper)' rows in its own table, beside diver's model and the baselines; a task
    without published numbers gets none, and a metrics file's own 'paper' wins."""
    from diver.report.sections import finetune_section

    runs = {
        "diver": [{"balanced_accuracy": 0.60}, {"balanced_accuracy": 0.64}],
        "linear": [{"balanced_accuracy": 0.41}],
        "scratch": [{"balanced_accuracy": 0.50}, {"balanced_accuracy": 0.52}],
    }
    metrics = {
        "task": "physionet_mi",
        "mode": "full",
        "models": {m: {"summary": _summary(r), "runs": r} for m, r in runs.items()},
    }
    path = tmp_path / "physionet_mi" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps(metrics))
    rows = read_finetune(path)
    paper = {r["model"]: r for r in rows if r["paper"]}
    assert set(paper) == {"DIVER-1 (paper)", "CBraMod (paper)", "LaBraM (paper)"}
    assert paper["DIVER-1 (paper)"]["metrics"]["balanced_accuracy"].mean == 0.676
    assert paper["DIVER-1 (paper)"]["metrics"]["balanced_accuracy"].sem is None
    assert paper["CBraMod (paper)"]["source"].endswith("benchmarks/physionet_mi.yaml")
    html = finetune_section([path])
    table = html[html.index("<h3>physionet_mi (full)</h3>") :].split("</table>")[0]
    for text in ("diver", "linear", "scratch", "DIVER-1 (paper)", "0.676", "LaBraM (paper)"):
        assert text in table, text
    # a second pretrained cell on the same task: its rows join, the paper's stay once
    second = tmp_path / "cell2" / "metrics.json"
    second.parent.mkdir()
    second.write_text(json.dumps({**metrics, "pretrained_cell": "eeg/1s/small/f0.2_e32"}))
    table = finetune_section([path, second]).split("<h3>physionet_mi (full)</h3>")[1]
    table = table.split("</table>")[0]
    assert table.count("DIVER-1 (paper)") == 1 and "eeg/1s/small/f0.2_e32" in table
    # Reported for full fine-tuning: not in the linear-probe table.
    probe = tmp_path / "probe" / "metrics.json"
    probe.parent.mkdir()
    probe.write_text(json.dumps({**metrics, "mode": "linear-probe"}))
    assert not any(r["paper"] for r in read_finetune(probe))
    # No published number for Mental Arithmetic: our rows only.
    other = tmp_path / "mental_arithmetic" / "metrics.json"
    other.parent.mkdir()
    other.write_text(json.dumps({**metrics, "task": "mental_arithmetic"}))
    assert not any(r["paper"] for r in read_finetune(other))
    # The metrics file's own paper mapping (e.g. a task file kept elsewhere) wins.
    own = tmp_path / "mine" / "metrics.json"
    own.parent.mkdir()
    own.write_text(json.dumps({**metrics, "task": "mine",
                               "paper": {"metric": "auroc", "results": {"X": 0.9}}}))  # fmt: skip
    mine = [r for r in read_finetune(own) if r["paper"]]
    assert [(r["model"], r["metrics"]["auroc"].mean) for r in mine] == [("X (paper)", 0.9)]
