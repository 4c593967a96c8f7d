"""Issue 15's GPU check (``benchmarks/gpu_check.sh``) and the instrumentation it reads.

The check itself can only really run on a GPU; here it is checked as far as a CPU can:
the script parses, the GPU run refuses a machine without one (loudly, before any work),
the dry run goes end to end and prints every line of the report (slow: ~90 s), the
pure helpers (peak table, throughput, loss tolerance, device checks) on made-up inputs.
Beside it, the two things it needed from the product: the training loop's loader wait
and model FLOPs per step, and the ``compile`` setting.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from diver.config import ConfigError, PretrainConfig, config_from_dict
from diver.data import CHANNEL_TYPE_IDS, MODALITY_IDS, WindowBatch, WindowSample, collate_windows
from diver.model import model_config
from diver.model.flops import batch_training_flops, forward_flops
from diver.model.mup_setup import build_model
from diver.study.settings import PretrainSettings
from diver.train.distributed import DistEnv
from diver.train.engine import TrainEngine, compile_model
from diver.train.loop import TrainingLoop, TrainState
from diver.train.outputs import TRAIN_COLUMNS, RunLogs
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
TIMEOUT = 600

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _gpu_check() -> ModuleType:
    """``benchmarks/gpu_check.py`` as a module (``benchmarks`` is not a package); in
    ``sys.modules`` while it runs, as its dataclasses need."""
    spec = importlib.util.spec_from_file_location(
        "gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _script(*args: str, hide_gpus: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    if hide_gpus:  # so the test means the same on a GPU node: no GPU visible
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
    )


# ------------------------------------------------------------------ the script


def test_script_is_valid_bash_and_executable() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_without_a_gpu_the_check_fails_loudly_before_any_work(tmp_path: Path) -> None:
    work = tmp_path / "work"
    started = time.monotonic()
    proc = _script("--work", str(work))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpu_check: FAIL: no CUDA GPU is visible" in proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr
    assert "never falls back to the CPU" in proc.stderr and "--dry-run" in proc.stderr
    assert "RESULT" not in proc.stdout
    # Refused before building anything: only the probe of torch ran.
    assert not (work / "corpus").exists() and not (work / "main").exists()
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_dry_run_goes_end_to_end_and_prints_the_whole_report(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = _script("--dry-run", "--peak-tflops", "0.5", "--work", str(work), hide_gpus=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-4000:]
    assert "bf16 is refused on the CPU by resolve_precision (precision bf16 needs CUDA" in out

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        assert match, f"no line matching {pattern!r} in:\n{out}"
        return float(match.group(1).replace(",", ""))

    assert number(r"tokens/s per GPU \(compile off\): ([\d,]+)") > 0
    assert 0 < number(r"MFU \(compile off\): ([\d.]+) % of 0.5 TFLOP/s") < 100
    assert 0 < number(r"loader wait fraction: ([\d.]+) %") < 100
    assert "peak GPU memory: n/a (dry run on the CPU)" in out
    assert number(r"peak host RSS ([\d,]+) MiB") > 100
    # Two fp32 CPU runs of the same steps are identical; so is the eager-backend compile.
    assert re.search(r"loss tolerance: .* relative difference 0\.00 % \(< 5 %\): PASS", out)
    assert number(r"fp32 reference: tokens/s ([\d,]+)") > 0
    assert number(r"compile \(eager\): tokens/s off [\d,]+, on ([\d,]+)") > 0
    assert re.search(r"loss vs off 0\.00 %: PASS", out)
    assert number(r"finetune: synth_eeg_oscillation .* on cpu: balanced accuracy ([\d.]+)") > 0.6
    assert out.rstrip().endswith("RESULT: PASS") or "RESULT: PASS" in out
    # What the report read: the runs' own logs, with the loop's new columns.
    metrics = json.loads((work / "compiled" / "metrics.json").read_text())
    assert (metrics["device"], metrics["precision"], metrics["compile"]) == ("cpu", "fp32", "eager")
    assert json.loads((work / "finetune" / "metrics.json").read_text())["device"] == "cpu"


def test_a_gpu_run_whose_steps_see_no_gpu_fails_at_its_first_training_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU path up to its first run, on a machine that only claims a GPU: the bf16
    run asks for ``precision: bf16``, which the child refuses without CUDA, so the check
    stops there rather than training on the CPU."""
    check = _gpu_check()
    claimed = {
        "cuda": True, "torch": torch.__version__, "cuda_build": "12.8",
        "device_name": "NVIDIA A100-SXM4-80GB", "device_count": 1, "bf16": True,
        "bf16_refused": None,
    }  # fmt: skip
    monkeypatch.setattr(check, "run_probe", lambda work: claimed)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = check.parse_args(["--hours", "0.3", "--batch", "8", "--workers", "1", "--steps", "6"])
    with pytest.raises(check.CheckFailed, match=r"pretraining \(main\) failed \(exit \d+\)") as err:
        check.check(args, tmp_path)
    assert "precision bf16 needs CUDA" in str(err.value)
    assert "peak 312 TFLOP/s bf16" in capsys.readouterr().out
    assert not (tmp_path / "main" / "metrics.json").exists()


# ------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 SXM5 80GB", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA A10", 125.0),
    ],
)
def test_peak_table_by_device_name(name: str, tflops: float) -> None:
    assert _gpu_check().peak_tflops(name) == tflops


def test_peak_table_refuses_gpus_without_bf16_and_unknown_ones() -> None:
    check = _gpu_check()
    with pytest.raises(check.CheckFailed, match="no bf16 tensor cores"):
        check.peak_tflops("Tesla V100-SXM2-32GB")
    for name in ("NVIDIA A10G", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 4090"):
        with pytest.raises(check.CheckFailed, match="pass --peak-tflops"):
            check.peak_tflops(name)


def test_rates_are_sums_over_the_steps_after_warmup() -> None:
    check = _gpu_check()
    rows = [
        {"step_s": 10.0, "step_tokens": 100.0, "model_flops": 1e3, "loader_wait_s": 9.0},
        {"step_s": 1.0, "step_tokens": 100.0, "model_flops": 1e6, "loader_wait_s": 0.5},
        {"step_s": 3.0, "step_tokens": 300.0, "model_flops": 3e6, "loader_wait_s": 0.5},
    ]
    rates = check.throughput(rows, warmup=1)
    assert rates["tokens_per_s"] == 100.0 and rates["flop_per_s"] == 1e6
    assert rates["loader_wait_fraction"] == 0.25 and rates["warmup_s"] == 10.0
    with pytest.raises(check.CheckFailed, match="raise --steps"):
        check.throughput(rows, warmup=3)


def test_loss_tolerance_compares_the_means_of_the_last_steps() -> None:
    check = _gpu_check()
    reference = [5.0] * 10 + [1.0] * 20
    assert check.loss_difference([9.0] * 10 + [1.04] * 20, reference, 20)["rel_diff"] == (
        pytest.approx(0.04)
    )
    assert check.loss_difference([5.0] * 30, reference, 20)["rel_diff"] == pytest.approx(4.0)
    assert check.loss_difference([1.0] * 4, [2.0] * 4, 20)["window"] == 4
    with pytest.raises(check.CheckFailed, match="different lengths"):
        check.loss_difference([1.0] * 3, [1.0] * 4, 20)


def _fake_outputs(check: ModuleType, monkeypatch: pytest.MonkeyPatch, metrics: dict) -> None:
    """Replace the check's child processes by writing the outputs a run would."""

    def run(cmd: list[str], log: Path, what: str) -> float:
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(metrics))
        columns = ",".join(TRAIN_COLUMNS)
        (out / "train_log.csv").write_text(f"{columns}\n" + ",".join(["1"] * len(TRAIN_COLUMNS)))
        return 1.0

    monkeypatch.setattr(check, "run", run)


def test_a_gpu_step_that_ran_on_the_cpu_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = _gpu_check()
    args = check.parse_args([])  # the GPU run
    args.epochs = 1
    on_cpu = {"device": "cpu", "precision": "bf16", "compile": "off", "task": "t"}
    _fake_outputs(check, monkeypatch, on_cpu)
    with pytest.raises(check.CheckFailed, match="ran on 'cpu', not on cuda: it fell back"):
        check.pretrain(args, tmp_path, tmp_path, "main", "bf16", compile_on=False)
    with pytest.raises(check.CheckFailed, match="fine-tuning ran on 'cpu'"):
        check.finetune(args, tmp_path / "taskset.parquet", tmp_path / "model.pt", tmp_path)
    # On the GPU but in the wrong precision, or not compiled when asked: also failures.
    _fake_outputs(check, monkeypatch, {**on_cpu, "device": "cuda:0", "precision": "fp32"})
    with pytest.raises(check.CheckFailed, match="asked for bf16, the engine computed in fp32"):
        check.pretrain(args, tmp_path, tmp_path, "fp32-run", "bf16", compile_on=False)
    _fake_outputs(check, monkeypatch, {**on_cpu, "device": "cuda:0"})
    with pytest.raises(check.CheckFailed, match="compile off, asked for inductor"):
        check.pretrain(args, tmp_path, tmp_path, "eager-run", "bf16", compile_on=True)
    result = check.pretrain(args, tmp_path, tmp_path, "good-run", "bf16", compile_on=False)
    assert result.metrics["device"] == "cuda:0"


# ------------------------------------------------------------------ the loop's instrumentation


class _FakeDeepSpeed:
    """The engine calls ``TrainingLoop._step`` makes, over a plain module (SGD)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
        self.compiled_with: str | None = None

    def __call__(self, inputs: Any, generator: torch.Generator | None = None) -> Any:
        return self.module(inputs, generator=generator)

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        pass

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()

    def get_global_grad_norm(self) -> float:
        return 1.0

    def compile(self, backend: str) -> None:
        self.compiled_with = backend


def _batch(shapes: list[tuple[int, int]], patch: int) -> WindowBatch:
    samples = [
        WindowSample(
            signal=0.1 * torch.randn(c, n * patch),
            coords=torch.randn(c, 3) * 50,
            channel_type_ids=torch.full((c,), CHANNEL_TYPE_IDS["eeg"]),
            channel_subtype_ids=torch.zeros(c, dtype=torch.long),
            modality_id=MODALITY_IDS["eeg"],
            channels=torch.arange(c),
            patch_start=0,
            patch_samples=patch,
            dataset="d",
            subject="s",
            recording="r",
            window_index=i,
        )
        for i, (c, n) in enumerate(shapes)
    ]
    return collate_windows(samples)


def _slow(batches: list[WindowBatch], delay: float) -> Iterator[WindowBatch]:
    for batch in batches:
        time.sleep(delay)
        yield batch


def test_step_records_its_loader_wait_and_model_flops(tmp_path: Path) -> None:
    """The wait is the time in ``next(batches)`` only (a loader 0.2 s late per batch
    shows as 0.2 s per micro-batch; a ready one as ~0, however long the compute), the
    FLOPs each window's at its own shape, the tokens the real ones."""
    config = model_config("debug", "1s")
    torch.manual_seed(0)
    model = build_model(config)
    cpu = torch.device("cpu")
    settings = PretrainSettings(
        corpus="unused", out=str(tmp_path), size="debug", patch="1s", data_fraction=1.0, epochs=1
    )
    loop = TrainingLoop(
        settings,
        DistEnv(rank=0, local_rank=0, world_size=1, backend="gloo", device=cpu),
        None,  # type: ignore[arg-type]  # _step does not read the plan
        TrainEngine(_FakeDeepSpeed(model), cpu, torch.float32, 0, {}),
        config,
        TrainState(),
        resumed_from=None,
        logs=RunLogs.open(tmp_path, keep_until=-1, truncate=True),
    )
    shapes = [[(3, 4), (5, 2)], [(2, 6)]]
    batches = [_batch(s, config.patch_samples) for s in shapes]
    late = loop._step(_slow(batches, 0.2), k=2)
    assert 0.4 <= late["loader_wait_s"] < 0.55
    ready = loop._step(iter(batches), k=2)
    assert ready["loader_wait_s"] < 0.05
    expected = sum(forward_flops(config, c, n).training for s in shapes for c, n in s)
    for metrics in (late, ready):
        assert metrics["model_flops"] == pytest.approx(expected)
        assert metrics["step_tokens"] == 3 * 4 + 5 * 2 + 2 * 6
    one = batches[0]
    assert batch_training_flops(
        config, one.channel_mask.sum(1).tolist(), one.patch_mask.sum(1).tolist()
    ) == pytest.approx(sum(forward_flops(config, c, n).training for c, n in shapes[0]))


# ------------------------------------------------------------------ the compile setting


def test_compile_setting_is_validated_and_operational() -> None:
    runtime = PretrainConfig().runtime
    assert (runtime.compile, runtime.compile_backend) == (False, "inductor")
    on = config_from_dict({"pretrain": {"compile": True, "compile_backend": "eager"}})
    assert on.pretrain.runtime.compile and on.pretrain.runtime.compile_backend == "eager"
    # Operational: switching it does not make another run (a resume may switch it).
    assert on.pretrain.identity() == PretrainConfig().identity()
    with pytest.raises(ConfigError, match=r"pretrain\.compile: 'yes' is not of type 'boolean'"):
        config_from_dict({"pretrain": {"compile": "yes"}})
    with pytest.raises(ConfigError, match=r"pretrain\.compile_backend: 'tvm' is not one of"):
        config_from_dict({"pretrain": {"compile_backend": "tvm"}})
    with pytest.raises(ConfigError, match="compile_backend"):
        PretrainConfig().with_overrides(compile_backend="cudagraphs")


def test_compile_goes_through_the_deepspeed_engine() -> None:
    engine = _FakeDeepSpeed(torch.nn.Linear(2, 2))
    compile_model(engine, "aot_eager")
    assert engine.compiled_with == "aot_eager"

    class OldEngine:  # DeepSpeed before engine.compile
        pass

    with pytest.raises(ConfigError, match=r"DeepSpeed >= 0\.14"):
        compile_model(OldEngine(), "inductor")
