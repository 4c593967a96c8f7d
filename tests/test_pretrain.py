"""Pretraining on real DeepSpeed (CPU, gloo): outputs, exact resume, preemption, errors.

Every run is a real ``diver pretrain`` process on a small corpus built once per session
from the synthetic recordings (six subjects, so the subject-level split has held-out
subjects).  The ``debug`` model trains 12 optimizer steps (44 windows, batch 8,
2 epochs) in a few seconds; fp32 on CPU is deterministic, so "exact resume" is tested
with ``==`` on the logged losses.  Multi-process and per-ZeRO-stage runs are ``slow``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from diver.config import (
    BatchConfig,
    PretrainConfig,
    ValidationConfig,
)
from diver.data import make_splits, micro_batches_per_epoch
from diver.exitcodes import EXIT_PREEMPTED
from diver.model import DiverPretrainModel, ModelConfig, model_config
from diver.model.flops import six_nd, training_flops, window_training_flops
from diver.model.inputs import EncoderInputs
from diver.model.mup_setup import attach_base_shapes, build_model, count_parameters
from diver.train.engine import batch_geometry, enable_activation_checkpointing
from diver.train.schedule import CosineFactor, cosine_schedule
from diver.train.validation import evaluate
from tests.conftest import (
    REPO_ROOT,
    alive,
    build_synthetic_corpus,
    built_once,
    processes,
    shared_dir,
)

EPOCHS = 2
GLOBAL_BATCH = 8
CHECKPOINT_EVERY = 3
TIMEOUT = 300
LOSS_COLUMNS = ("step", "epoch", "loss", "loss_time", "loss_fft", "loss_stft", "lr", "grad_norm")


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with built_once(tmp_path_factory, "pretrain-corpus") as root:
        if root is not None:
            build_synthetic_corpus(root, hours=0.3)
    return shared_dir(tmp_path_factory, "pretrain-corpus") / "corpus"


def _env() -> dict[str, str]:
    """A clean single-process environment; the extension build is shared with the repo."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["TORCH_EXTENSIONS_DIR"] = str(REPO_ROOT / ".cache" / "torch_extensions")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(corpus: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    base = launcher or [sys.executable, "-m", "diver"]
    return [
        *base,
        "pretrain",
        "--corpus",
        str(corpus),
        "--size",
        "debug",
        "--patch",
        "1s",
        "--epochs",
        str(EPOCHS),
        "--global-batch",
        str(GLOBAL_BATCH),
        "--checkpoint-every",
        str(CHECKPOINT_EVERY),
        "--out",
        str(out),
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start in its own session (process group) so the whole tree can be killed."""
    with log.open("wb") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def _wait_for(
    predicate: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _losses(out: Path) -> list[tuple[str, ...]]:
    """The per-step columns that must match exactly across a resume (not timings)."""
    return [tuple(row[c] for c in LOSS_COLUMNS) for row in _rows(out / "train_log.csv")]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _complete_checkpoints(out: Path) -> list[str]:
    root = out / "checkpoints"
    return sorted(
        (p.name for p in root.glob("step-*") if (p / "diver_checkpoint.json").exists()),
        key=lambda name: int(name.split("-")[1]),
    )


def _train_rows_at_least(out: Path, n: int) -> Callable[[], bool]:
    def check() -> bool:
        path = out / "train_log.csv"
        return path.exists() and len(path.read_text().splitlines()) >= n + 1

    return check


def _make_tracking(root: Path) -> tuple[Path, Path, str]:
    """A study config pointing MLflow at a fresh SQLite store, and its parent run."""
    from diver.tracking.parent import ensure_parent_run
    from diver.tracking.runid import write_run_id

    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = root / "study.yaml"
    config.write_text(f"study: pretrain-test\ntracking:\n  uri: '{uri}'\n")
    run_id = ensure_parent_run(uri, "pretrain-test", "pretrain-test")
    run_file = root / "parent_run_id"
    write_run_id(run_file, run_id)
    return config, run_file, uri


def _child_runs(uri: str, run_file: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(run_file.read_text().strip())
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run A: uninterrupted, ZeRO-2, world size 1, logged to MLflow (built once)."""
    with built_once(tmp_path_factory, "pretrain-reference") as root:
        if root is not None:
            config, run_file, _ = _make_tracking(root)
            cmd = _command(
                corpus, root / "run", "--config", str(config), "--parent-run", str(run_file)
            )
            _ok(_run(cmd))
    return shared_dir(tmp_path_factory, "pretrain-reference") / "run"


@pytest.fixture(scope="module")
def tracking(reference: Path) -> tuple[Path, Path, str]:
    """The reference run's study config, parent-run file and MLflow URI."""
    root = reference.parent
    return root / "study.yaml", root / "parent_run_id", f"sqlite:///{root / 'mlflow.db'}"


# ----------------------------------------------------------------- fast units


def test_cosine_schedule_follows_each_groups_own_peak() -> None:
    """Two groups with different peaks (as MuAdamW makes them) each follow
    lr0 * (0.01 + 0.99 * 0.5 * (1 + cos(pi t / T))) and end at 0.01 x their own peak."""
    total = 10
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.25}])
    scheduler = cosine_schedule(optimizer, total)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    final = [g["lr"] for g in optimizer.param_groups]
    for t, lrs in enumerate(seen):
        factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / total))
        assert lrs == pytest.approx([1.0 * factor, 0.25 * factor], rel=1e-12)
    assert seen[0] == [1.0, 0.25]  # no warm-up: the first update runs at the peak
    assert final == pytest.approx([0.01, 0.0025], rel=1e-12)

    # The state dict restores the position (what a checkpoint relies on): a scheduler
    # loaded after 4 steps sets the same rates as the original at the next step.
    def groups() -> list[dict]:
        return [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.25}]

    original_opt, restored_opt = torch.optim.SGD(groups()), torch.optim.SGD(groups())
    original, restored = cosine_schedule(original_opt, total), cosine_schedule(restored_opt, total)
    for _ in range(4):
        original_opt.step()
        original.step()
    restored.load_state_dict(original.state_dict())
    for sched, opt in ((original, original_opt), (restored, restored_opt)):
        opt.step()
        sched.step()
    assert [g["lr"] for g in restored_opt.param_groups] == [
        g["lr"] for g in original_opt.param_groups
    ]
    assert original_opt.param_groups[1]["lr"] == pytest.approx(0.25 * CosineFactor(total)(5))


def test_cosine_warmup_and_bad_arguments() -> None:
    factor = CosineFactor(total_steps=10, warmup_steps=2)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == 1.0 and factor(10) == pytest.approx(0.01)
    for kwargs in ({"total_steps": 0}, {"total_steps": 5, "warmup_steps": 5}, {"min_ratio": 2.0}):
        with pytest.raises(ValueError):
            CosineFactor(**{"total_steps": 10, **kwargs})


def test_batch_geometry_and_epoch_length() -> None:
    config = BatchConfig(global_batch=192)
    assert batch_geometry(config, 8) == (24, 1)
    assert batch_geometry(BatchConfig(global_batch=192, micro_batch=4), 8) == (4, 6)
    with pytest.raises(ValueError, match=r"192 is not a multiple of micro batch 5 x world size 8"):
        batch_geometry(BatchConfig(global_batch=192, micro_batch=5), 8)
    # One rank, no workers: ceil(n / micro) micro-batches.
    assert micro_batches_per_epoch(44, 1, 0, 8) == 6
    # Two ranks x two workers of 5 windows each, micro 4: two batches per worker.
    assert micro_batches_per_epoch(21, 2, 2, 4) == 4
    # Ranks whose worker slices batch differently all stop at the smallest count.
    assert micro_batches_per_epoch(18, 2, 2, 4) == 3


def test_activation_checkpointing_recomputes_blocks_with_identical_results() -> None:
    config = model_config("debug", "1s")
    torch.manual_seed(0)
    batch = {
        "patches": torch.randn(2, 3, 4, config.patch_samples) * 0.1,
        "coords_mm": torch.randn(2, 3, 3) * 30,
        "type_ids": torch.tensor([[2, 2, 2], [1, 1, 1]]),
        "subtype_ids": torch.tensor([[4, 4, 4], [1, 1, 1]]),
        "channel_mask": torch.ones(2, 3, dtype=torch.bool),
        "patch_mask": torch.ones(2, 4, dtype=torch.bool),
    }

    def run(checkpointed: bool) -> tuple[float, list[torch.Tensor], int]:
        torch.manual_seed(1)
        model = build_model(config)
        if checkpointed:
            enable_activation_checkpointing(model)
        calls = []
        for block in model.encoder.blocks:
            block.attn.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(2)  # dropout is on: the recomputation must replay it
        out = model(EncoderInputs(**batch), generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return float(out.loss.detach()), grads, len(calls)

    loss, grads, calls = run(False)
    loss_ckpt, grads_ckpt, calls_ckpt = run(True)
    assert calls == config.depth
    assert calls_ckpt == 2 * config.depth  # forward + recomputation in the backward
    assert loss_ckpt == loss
    for g, h in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(g, h, rtol=0, atol=0)


# ------------------------------------------------------------- real runs, ws 1


def test_debug_pretrains_and_writes_complete_outputs(reference: Path, corpus: Path) -> None:
    out = reference
    for name in (
        "train_log.csv",
        "val_log.csv",
        "model.pt",
        "metrics.json",
        "loss_curve.png",
        "ds_config.json",
        "run_config.json",
    ):
        assert (out / name).is_file(), name

    metrics = _metrics(out)
    config = model_config("debug", "1s")
    splits = make_splits(corpus, 1.0, ValidationConfig())
    steps_per_epoch = math.ceil(len(splits.train) / GLOBAL_BATCH)
    assert metrics["steps"] == EPOCHS * steps_per_epoch == 12
    assert metrics["n_params"] == count_parameters(config)
    assert metrics["tokens"] == pytest.approx(EPOCHS * metrics["unique_tokens"])
    assert metrics["flops_6nd"] == pytest.approx(six_nd(config, metrics["tokens"]))
    assert metrics["flops"] == pytest.approx(training_flops(config, metrics["tokens"]))
    assert (metrics["size"], metrics["patch"], metrics["data_fraction"]) == ("debug", "1s", 1.0)
    assert metrics["epochs"] == EPOCHS and metrics["train_windows"] == len(splits.train)
    assert metrics["val_windows"] == len(splits.val) > 0

    train = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in train] == list(range(1, 13))
    assert [int(r["epoch"]) for r in train] == [0] * 6 + [1] * 6
    tokens = [float(r["tokens"]) for r in train]
    assert all(b > a for a, b in itertools.pairwise(tokens))
    assert tokens[-1] == metrics["tokens_seen"]
    # Each step's wall time, its wait in next(batches) (no workers: the loading itself,
    # so never zero, and never the whole step) and its model FLOPs (diver.model.flops).
    step_s = [float(r["step_s"]) for r in train]
    waits = [float(r["loader_wait_s"]) for r in train]
    assert all(0 < w < s for w, s in zip(waits, step_s, strict=True))
    step_tokens = [b - a for a, b in itertools.pairwise([0.0, *tokens])]
    per_token = [
        window_training_flops(config, c, n) / (c * n)
        for c, n in itertools.product(range(1, 33), range(1, 31))
    ]
    for row, n, s in zip(train, step_tokens, step_s, strict=True):
        assert float(row["tokens_per_s"]) == pytest.approx(n / s)
        # Between the cheapest and the dearest window shape, per token.
        assert min(per_token) * n <= float(row["model_flops"]) <= max(per_token) * n
    assert metrics["loader_wait_fraction"] == pytest.approx(sum(waits) / sum(step_s))
    assert (metrics["device"], metrics["precision"], metrics["compile"]) == ("cpu", "fp32", "off")
    assert metrics["peak_rss_bytes"] > 2**20 and "peak_gpu_memory_bytes" not in metrics

    val = _rows(out / "val_log.csv")
    assert [(int(r["epoch"]), int(r["step"])) for r in val] == [(0, 0), (0, 6), (1, 12)]
    assert float(val[-1]["val_loss"]) == metrics["val_loss"]
    assert metrics["val_loss"] < 0.5 * float(val[0]["val_loss"])

    ds_config = json.loads((out / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == 2
    assert ds_config["train_batch_size"] == GLOBAL_BATCH
    assert "optimizer" not in ds_config and "scheduler" not in ds_config
    # Checkpoints at steps 3, 6, 9 (none after the last step); the newest two are kept.
    assert _complete_checkpoints(out) == ["step-6", "step-9"]


def test_model_file_loads_without_deepspeed_and_reproduces_val_loss(
    reference: Path, corpus: Path
) -> None:
    out = reference
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["step"] == 12
    config = ModelConfig(**payload["model_config"])
    assert config == model_config("debug", "1s")
    model = DiverPretrainModel(config)
    model.load_state_dict(payload["state_dict"])
    attach_base_shapes(model)
    defaults = ValidationConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs (OMP_NUM_THREADS=1): same reduction order
    try:
        result = evaluate(
            model,
            make_splits(corpus, 1.0, defaults).val,
            config.patch_samples,
            batch_size=defaults.val_batch,
            mask_seed=defaults.split_seed,
        )
    finally:
        torch.set_num_threads(threads)
    assert result["val_loss"] == _metrics(out)["val_loss"]


def test_mlflow_child_run_has_params_curves_and_artifacts(
    reference: Path, tracking: tuple[Path, Path, str]
) -> None:
    from mlflow import MlflowClient

    out = reference
    _, run_file, uri = tracking
    client = MlflowClient(uri)
    children = _child_runs(uri, run_file)
    assert len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["diver.stage"] == "pretrain"
    assert run.data.tags["diver.cell"] == "mixed/1s/debug/f1.0_e2"
    assert run.data.tags["diver.corpus_manifest_sha256"]
    assert run.data.params["size"] == "debug" and run.data.params["zero_stage"] == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 13))
    waits = client.get_metric_history(run.info.run_id, "train_loader_wait_s")
    assert sorted(m.step for m in waits) == list(range(1, 13))
    assert run.data.tags["diver.device"] == "cpu" and run.data.tags["diver.precision"] == "fp32"
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in val) == [0, 6, 12]
    assert run.data.metrics["final_val_loss"] == _metrics(out)["val_loss"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "loss_curve.png", "ds_config.json", "run_config.json"} <= artifacts


def test_rerun_of_a_complete_run_is_a_no_op_and_other_settings_are_refused(
    reference: Path, corpus: Path
) -> None:
    out = reference
    before = (out / "metrics.json").stat().st_mtime_ns
    proc = _ok(_run(_command(corpus, out)))
    assert "already complete" in proc.stdout
    assert (out / "metrics.json").stat().st_mtime_ns == before

    proc = _run(_command(corpus, out, "--lr", "1e-3"))
    assert proc.returncode == 2
    assert "lr: 0.0023 there, 0.001 now" in proc.stderr
    assert (out / "metrics.json").stat().st_mtime_ns == before


def test_sigkill_then_rerun_resumes_exactly(reference: Path, corpus: Path, tmp_path: Path) -> None:
    """Run B is SIGKILLed (whole process group) after its step-3 checkpoint; the rerun
    continues from it and logs the same losses as the uninterrupted run A."""
    ref = reference
    out = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = _start(_command(corpus, out), log)
    marker = out / "checkpoints" / "step-3" / "diver_checkpoint.json"
    _wait_for(marker.exists, proc, log, "the step-3 checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "metrics.json").exists()

    rerun = _ok(_run(_command(corpus, out)))
    resumed = [line for line in rerun.stdout.splitlines() if "resumed from checkpoint" in line]
    assert resumed, rerun.stdout
    step = int(resumed[0].split(" at step ")[1].split()[0])
    assert 3 <= step < 12
    assert _losses(out) == _losses(ref)  # every step once, identical values
    assert _rows(out / "val_log.csv") == _rows(ref / "val_log.csv")
    assert _metrics(out)["val_loss"] == _metrics(ref)["val_loss"]
    assert _metrics(out)["resumed_from_step"] == step


def test_sigterm_saves_a_checkpoint_exits_75_and_the_rerun_resumes(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    ref = reference
    out = tmp_path / "run"
    log = tmp_path / "first.log"
    config, run_file, uri = _make_tracking(tmp_path)
    # No periodic checkpoints: the only one is the preemption checkpoint.
    cmd = _command(
        corpus,
        out,
        "--checkpoint-every",
        "0",
        "--config",
        str(config),
        "--parent-run",
        str(run_file),
    )
    proc = _start(cmd, log)
    _wait_for(_train_rows_at_least(out, 2), proc, log, "two optimizer steps")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_PREEMPTED == 75, log.read_text()
    assert "preempted" in log.read_text()
    saved = _complete_checkpoints(out)
    assert len(saved) == 1
    step = int(saved[0].split("-")[1])
    assert 2 <= step < 12
    assert len(_rows(out / "train_log.csv")) == step

    rerun = _ok(_run(cmd))
    assert (
        f"resumed from checkpoint {out / 'checkpoints' / saved[0]} at step {step}" in rerun.stdout
    )
    assert _losses(out) == _losses(ref)
    assert _metrics(out)["val_loss"] == _metrics(ref)["val_loss"]

    # MLflow: the preempted attempt ended KILLED; the resumed one holds the whole curve.
    runs = {r.info.status: r for r in _child_runs(uri, run_file)}
    assert sorted(runs) == ["FINISHED", "KILLED"]
    assert runs["KILLED"].data.tags["diver.preempted_at_step"] == str(step)
    assert runs["FINISHED"].data.tags["diver.resumed_from_step"] == str(step)
    history = MlflowClient(uri).get_metric_history(runs["FINISHED"].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 13))


def test_init_from_the_authors_checkpoint_warm_starts(
    corpus: Path, parity_data: Path, tmp_path: Path
) -> None:
    """``--init-from`` loads the authors' weights (debug-4x is their 2-layer d = 256
    fixture's shape): at a negligible lr the trained model stays on them; a cell of
    another shape is refused before any training."""
    from diver.model.load import load_checkpoint

    source = parity_data / "official_d256_L2_p500.ckpt.pt"
    out = tmp_path / "warm"
    cmd = _command(corpus, out, "--size", "debug-4x", "--epochs", "1", "--lr", "1e-12")
    _ok(_run([*cmd, "--init-from", str(source)]))
    _, imported, _ = load_checkpoint(source)
    trained = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert trained.keys() == imported.keys()
    drift = max((trained[k] - imported[k]).abs().max().item() for k in imported)
    assert drift < 1e-6
    # control: the same run from scratch ends nowhere near the authors' weights
    cold = _ok(_run(_command(corpus, tmp_path / "cold", "--size", "debug-4x", "--epochs", "1")))
    assert cold.returncode == 0
    scratch = torch.load(tmp_path / "cold" / "model.pt", weights_only=True)["state_dict"]
    assert max((scratch[k] - imported[k]).abs().max().item() for k in imported) > 0.1

    wrong = _run([*_command(corpus, tmp_path / "wrong"), "--init-from", str(source)])
    assert wrong.returncode != 0
    assert "--init-from" in wrong.stderr and "d_model" in wrong.stderr
    assert not (tmp_path / "wrong" / "model.pt").exists()


def test_incomplete_checkpoint_is_an_error_not_a_fresh_start(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    folder = out / "checkpoints" / "step-5"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"half a checkpoint")
    proc = _run(_command(corpus, out))
    assert proc.returncode == 2
    assert "none is complete" in proc.stderr and "step-5" in proc.stderr
    assert not (out / "train_log.csv").exists() and not (out / "model.pt").exists()


def test_damaged_complete_checkpoints_are_errors(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    """A truncated file is caught by its recorded size before loading; a file of the
    right size but garbage content fails DeepSpeed's load, reported with the folder."""
    ref = reference
    truncated = tmp_path / "truncated"
    shutil.copytree(ref / "checkpoints" / "step-9", truncated / "checkpoints" / "step-9")
    optim = next((truncated / "checkpoints" / "step-9").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:1000])
    proc = _run(_command(corpus, truncated))
    assert proc.returncode == 2
    assert "is damaged" in proc.stderr and optim.name in proc.stderr
    assert not (truncated / "train_log.csv").exists()

    garbage = tmp_path / "garbage"
    shutil.copytree(ref / "checkpoints" / "step-9", garbage / "checkpoints" / "step-9")
    states = garbage / "checkpoints" / "step-9" / "mp_rank_00_model_states.pt"
    states.write_bytes(b"\0" * states.stat().st_size)
    proc = _run(_command(corpus, garbage))
    assert proc.returncode == 2
    assert "cannot load checkpoint" in proc.stderr and "step-9" in proc.stderr
    assert not (garbage / "model.pt").exists()


class _Payload:
    """Pickles as a call of ``open(path, "w")``: loading it with ``weights_only=False``
    creates ``path`` (what an attacker's code would do, without a shell)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


def test_a_crafted_pickle_in_any_checkpoint_file_is_refused(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    """Issue 13: resuming a copied run folder must not run code.  Each file of a
    checkpoint is replaced by a pickle whose loading would create a file, with the
    marker's recorded size updated as an attacker would."""
    step = reference / "checkpoints" / "step-9"
    names = sorted(p.name for p in step.glob("*.pt"))
    assert {"rng_rank0.pt", "mp_rank_00_model_states.pt"} <= set(names)
    assert any("optim_states" in name for name in names)
    for name in names:
        out = tmp_path / name
        shutil.copytree(step, out / "checkpoints" / "step-9")
        folder = out / "checkpoints" / "step-9"
        planted = tmp_path / f"pwned-{name}"
        torch.save({"state": _Payload(planted)}, folder / name)
        marker = json.loads((folder / "diver_checkpoint.json").read_text())
        marker["files"][name] = (folder / name).stat().st_size
        (folder / "diver_checkpoint.json").write_text(json.dumps(marker))
        proc = _run(_command(corpus, out))
        assert not planted.exists(), f"loading {name} ran the payload"
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert name in proc.stderr and ("refused" in proc.stderr or "weights" in proc.stderr)
        assert not (out / "train_log.csv").exists()


def test_bad_batch_geometry_names_the_numbers(corpus: Path, tmp_path: Path) -> None:
    proc = _run(_command(corpus, tmp_path / "run", "--micro-batch", "3"))
    assert proc.returncode == 2
    assert "global batch 8 is not a multiple of micro batch 3 x world size 1" in proc.stderr


# -------------------------------------------------------------------- slow runs


@pytest.mark.slow
def test_two_ranks_resume_exactly_after_killing_the_process_group(
    corpus: Path, tmp_path: Path
) -> None:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "diver",
    ]
    ref = tmp_path / "reference"
    _ok(_run(_command(corpus, ref, launcher=torchrun)))
    assert _metrics(ref)["world_size"] == 2
    assert sorted(p.name for p in (ref / "checkpoints" / "step-9").glob("rng_rank*.pt")) == [
        "rng_rank0.pt",
        "rng_rank1.pt",
    ]

    out = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = _start(_command(corpus, out, launcher=torchrun), log)
    marker = out / "checkpoints" / "step-3" / "diver_checkpoint.json"
    _wait_for(marker.exists, proc, log, "the step-3 checkpoint")
    # torchrun starts each rank in a session of its own: they are not in the group.
    ranks = {pid for pid, _, parent, _ in processes() if parent == proc.pid}
    assert len(ranks) == 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while alive(proc.pid, ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(proc.pid, ranks) == []  # no orphaned rank goes on training...
    assert not (out / "metrics.json").exists()  # ...nor finished the run meanwhile

    rerun = _ok(_run(_command(corpus, out, launcher=torchrun)))
    assert "resumed from checkpoint" in rerun.stdout
    assert _losses(out) == _losses(ref)
    assert _metrics(out)["val_loss"] == _metrics(ref)["val_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_zero_stage_trains_and_resumes_exactly(
    stage: int, corpus: Path, tmp_path: Path
) -> None:
    """Half the data, one epoch, batch 4 in micro-batches of 2 (gradient accumulation)."""
    extra = ("--zero-stage", str(stage), "--data-fraction", "0.5", "--global-batch", "4")
    extra += ("--micro-batch", "2", "--checkpoint-every", "2")

    def command(out: Path) -> list[str]:
        cmd = _command(corpus, out, *extra)
        cmd[cmd.index("--epochs") + 1] = "1"
        return cmd

    ref = tmp_path / "reference"
    _ok(_run(command(ref)))
    metrics = _metrics(ref)
    assert metrics["zero_stage"] == stage and metrics["steps"] == 6
    grad_norms = [float(r["grad_norm"]) for r in _rows(ref / "train_log.csv")]
    assert all(math.isfinite(g) and g > 0 for g in grad_norms)

    out = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = _start(command(out), log)
    marker = out / "checkpoints" / "step-2" / "diver_checkpoint.json"
    _wait_for(marker.exists, proc, log, "the step-2 checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    rerun = _ok(_run(command(out)))
    assert "resumed from checkpoint" in rerun.stdout
    assert _losses(out) == _losses(ref)
    assert _metrics(out)["val_loss"] == metrics["val_loss"]

    # model.pt is the full model even when ZeRO-3 partitioned it during training.
    payload = torch.load(out / "model.pt", weights_only=True)
    model = DiverPretrainModel(ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == metrics["n_params"]


# Runs the command in-process, then names the threads still running in that process.
_THREADS_AFTER = """
import json, os, sys
from diver.cli import main
code = main(sys.argv[1:])
tasks = os.listdir("/proc/self/task")
print(json.dumps([open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]))
sys.exit(code)
"""


def test_no_process_group_outlives_a_zero3_command(corpus: Path, tmp_path: Path) -> None:
    """A gloo group still alive at interpreter shutdown keeps its worker threads, which
    may then touch Python objects mid-finalisation and abort a job that had succeeded
    ("terminate called without an active exception": seen in CI on a 2-rank ZeRO-3
    SLURM job).  ZeRO-3's engine (pinned by DeepSpeed's module stack and a class-level
    lru_cache), DeepSpeed's own world group and torch.distributed.nn's default
    arguments all held groups; once the command returns, no gloo thread may be left."""
    cmd = _command(corpus, tmp_path / "run", "--zero-stage", "3")
    cmd[cmd.index("--epochs") + 1] = "1"
    proc = _ok(_run([sys.executable, "-c", _THREADS_AFTER, *cmd[3:]]))
    threads = json.loads(proc.stdout.strip().splitlines()[-1])
    assert _metrics(tmp_path / "run")["zero_stage"] == 3
    assert not [name for name in threads if "gloo" in name], threads


@pytest.mark.slow
def test_activation_checkpointing_run_matches_the_plain_run(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    ref = reference
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({"pretrain": {"activation_checkpointing": True}}))
    out = tmp_path / "run"
    _ok(_run(_command(corpus, out, "--config", str(config))))
    assert json.loads((out / "run_config.json").read_text())["settings"]["config"][
        "activation_checkpointing"
    ]
    assert _losses(out) == _losses(ref)


def test_pretrain_config_section_defaults() -> None:
    """The embedded default is the CPU-sized one; SPEC §3's constants are the defaults
    where SPEC fixes them."""
    config = PretrainConfig()
    opt = config.optimiser
    assert config.flat()["global_batch"] == 8
    assert (config.runtime.zero_stage, opt.lr, opt.weight_decay) == (2, 2.30e-3, 2.17e-7)
    assert (opt.min_lr_ratio, opt.grad_clip, opt.warmup_steps) == (0.01, 1.0, 0)


def test_preemption_flag_records_each_submitit_signal_and_restores_handlers() -> None:
    from diver.train.preemption import PREEMPT_SIGNALS, PreemptionFlag

    assert set(PREEMPT_SIGNALS) == {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    before = {sig: signal.getsignal(sig) for sig in PREEMPT_SIGNALS}
    for sig in PREEMPT_SIGNALS:
        with PreemptionFlag() as flag:
            assert not flag.raised
            os.kill(os.getpid(), sig)  # CPython runs the handler before the next bytecode
            assert flag.raised and flag.signum == sig
        assert {s: signal.getsignal(s) for s in PREEMPT_SIGNALS} == before


def test_zero3_validation_keeps_every_rank_in_step(corpus: Path) -> None:
    """Under ZeRO-3 every forward pass gathers parameters from all ranks, so each rank
    must make as many passes as the busiest one: with 3 validation batches over 2 ranks,
    rank 1 (one batch of its own) runs a discarded extra pass; its sums are unchanged."""
    config = model_config("debug", "1s")
    model = DiverPretrainModel(config)
    attach_base_shapes(model)
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, out: calls.append(1))
    val = make_splits(corpus, 1.0, ValidationConfig()).val
    batch = math.ceil(len(val) / 3)  # three batches
    assert math.ceil(len(val) / batch) == 3

    def rank_one(lockstep: bool) -> dict[str, float]:
        calls.clear()
        return evaluate(
            model, val, config.patch_samples, batch_size=batch, mask_seed=0,
            rank=1, world_size=2, lockstep=lockstep,
        )  # fmt: skip

    alone = rank_one(lockstep=False)
    assert len(calls) == 1  # batch 1 only
    in_step = rank_one(lockstep=True)
    assert len(calls) == 2  # batch 1, then batch 0 again for the others' second pass
    assert in_step == alone  # the extra pass is not counted
