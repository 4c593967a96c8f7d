"""The corpus stage spread over jobs (issue 14): a plan of chunks, one job per chunk, a
merge, and the same corpus as one `diver corpus` run.

Real recordings: eegmmidb's twelve 125 s runs of one subject (a dataset several chunks
long), the 360 s resting recording, the EEGLAB tutorial.  The last test runs the DAG
itself on the synthetic corpus.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diver.cli import main
from diver.config import CorpusConfig, DatasetConfig, load_config
from diver.corpus.build import build_chunk, build_corpus, merge_corpus
from diver.corpus.discovery import discover_recordings
from diver.corpus.folder import CorpusError, chunk_lock
from diver.corpus.plan import DEFAULT_BYTES_PER_HOUR, CorpusPlan, make_plan
from diver.data.index import CorpusIndex
from diver.exitcodes import EXIT_ERROR
from tests.conftest import REPO_ROOT, run_snakemake

RUN_SECONDS = 125  # each eegmmidb run
REST = ("resting_yasa", "data_resting_EO_200Hz_raw.fif")  # 360 s


def _eegmmidb(shared_data: Path) -> DatasetConfig:
    return DatasetConfig(
        name="eegmmidb",
        inputs=(str(shared_data / "eegmmidb_S001"),),
        subject_pattern=r"S(\d{3})R",
    )


def _corpus(*datasets: DatasetConfig, chunk_hours: float) -> CorpusConfig:
    return CorpusConfig(jobs=1, chunk_hours=chunk_hours, datasets=datasets)


def _tables_and_shards(out: Path) -> dict[str, bytes]:
    """The corpus as its users see it: the three tables and every shard, by name."""
    files = {name: (out / name).read_bytes() for name in ("qc.csv", "channels.csv", "manifest.csv")}
    for shard in sorted((out / "windows").rglob("*")):
        if shard.is_file():
            files[shard.relative_to(out).as_posix()] = shard.read_bytes()
    return files


def _assert_same_corpus(built: Path, reference: Path) -> None:
    assert _tables_and_shards(built) == _tables_and_shards(reference)
    pd.testing.assert_frame_equal(
        CorpusIndex.from_dir(built).frame, CorpusIndex.from_dir(reference).frame
    )


# --------------------------------------------------------------------------- the plan


def test_the_plan_splits_each_dataset_by_header_hours_and_is_deterministic(
    shared_data: Path, tmp_path: Path
) -> None:
    rest = DatasetConfig(name="rest", inputs=(str(shared_data.joinpath(*REST)),))
    # 0.15 h = 540 s: four 125 s runs fit, a fifth does not
    corpus = _corpus(_eegmmidb(shared_data), rest, chunk_hours=0.15)
    plan = make_plan(corpus)
    assert [c.name for c in plan.chunks] == [
        "eegmmidb-000", "eegmmidb-001", "eegmmidb-002", "rest-000",
    ]  # fmt: skip
    assert [len(c.recordings) for c in plan.chunks] == [4, 4, 4, 1]
    assert all(c.hours <= corpus.chunk_hours for c in plan.chunks)
    runs = [r for c in plan.chunks[:3] for r in c.recordings]
    assert {r.estimate for r in runs} == {"header"}
    assert all(r.hours == pytest.approx(RUN_SECONDS / 3600) for r in runs)
    assert [r.source for r in runs] == discover_recordings(_eegmmidb(shared_data))  # in order
    assert {c.dataset for c in plan.chunks[:3]} == {"eegmmidb"}

    path = tmp_path / "plan.json"
    plan.write(path)
    make_plan(corpus).write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert CorpusPlan.read(path) == plan  # settings, datasets and sources as planned


def test_a_header_mne_cannot_read_is_counted_by_the_file_size(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("S001R03.edf", "S001R04.edf"):
        shutil.copy(shared_data / "eegmmidb_S001" / name, folder / name)
    run_bytes = (folder / "S001R03.edf").stat().st_size
    broken_bytes = run_bytes // 2
    (folder / "broken.edf").write_bytes(b"not an EDF header".ljust(broken_bytes, b"."))
    (folder / "empty.edf").touch()  # discovery quarantines it unread
    planned = {
        r.source.recording: r
        for c in make_plan(_corpus(DatasetConfig("ds", (str(folder),)), chunk_hours=1)).chunks
        for r in c.recordings
    }
    assert planned["S001R03"].estimate == "header"
    # at the bytes per hour of the dataset's readable runs: half a run's bytes, half its hours
    assert planned["broken"].estimate == "size"
    assert planned["broken"].hours == pytest.approx(RUN_SECONDS / 3600 / 2, rel=1e-6)
    assert (planned["empty"].estimate, planned["empty"].hours) == ("none", 0.0)

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.move(folder / "broken.edf", alone / "broken.edf")
    (only,) = make_plan(_corpus(DatasetConfig("alone", (str(alone),)), chunk_hours=1)).chunks
    assert only.recordings[0].hours == broken_bytes / DEFAULT_BYTES_PER_HOUR


# ------------------------------------------------------------- chunks and the merge


def test_chunks_built_apart_and_merged_equal_the_one_job_run(
    shared_data: Path, tmp_path: Path
) -> None:
    """One `diver corpus` run; the same plan's chunks built one after the other; and two
    chunks of the same dataset built at once by two processes: the same corpus."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("S001R03.edf", "S001R04.edf", "S001R05.edf", "S001R06.edf"):
        shutil.copy(shared_data / "eegmmidb_S001" / name, runs / name)
    eegmmidb = DatasetConfig(name="eegmmidb", inputs=(str(runs),), subject_pattern=r"S(\d{3})R")
    rest = DatasetConfig(name="rest", inputs=(str(shared_data.joinpath(*REST)),))
    corpus = _corpus(eegmmidb, rest, chunk_hours=0.07)  # two 125 s runs a chunk
    whole = tmp_path / "whole"
    build_corpus(corpus.datasets, corpus, whole, progress=False)

    plan = make_plan(corpus)
    assert [c.name for c in plan.chunks] == ["eegmmidb-000", "eegmmidb-001", "rest-000"]
    plan_file = tmp_path / "plan.json"
    plan.write(plan_file)
    apart = tmp_path / "apart"
    for chunk in plan.chunks:
        result = build_chunk(plan, chunk.name, apart, progress=False, done=tmp_path / chunk.name)
        assert (result.recordings, result.processed) == (len(chunk.recordings),) * 2
        assert json.loads((tmp_path / chunk.name).read_text())["chunk"] == chunk.name
    assert not (apart / "qc.csv").exists()  # chunks write no tables
    assert merge_corpus(plan, apart, prune=True).windows > 0
    _assert_same_corpus(apart, whole)

    together = tmp_path / "together"
    command = [sys.executable, "-m", "diver", "corpus", "chunk", "--plan", str(plan_file),
               "--out", str(together), "--quiet", "--chunk"]  # fmt: skip
    two = [subprocess.Popen([*command, name], stderr=subprocess.PIPE, text=True)
           for name in ("eegmmidb-000", "eegmmidb-001")]  # fmt: skip
    for proc in two:
        assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    chunk = ["corpus", "chunk", "--plan", str(plan_file), "--out", str(together), "--quiet"]
    assert main([*chunk, "--chunk", "rest-000"]) == 0
    assert main(["corpus", "merge", "--plan", str(plan_file), "--out", str(together)]) == 0
    _assert_same_corpus(together, whole)
    # a chunk built again skips what it built (its receipts match)
    again = build_chunk(plan, "eegmmidb-001", together, progress=False)
    assert (again.processed, again.skipped) == (0, 2)


def test_chunks_of_one_dataset_go_side_by_side_and_a_chunk_only_once(
    shared_data: Path, tmp_path: Path
) -> None:
    plan = make_plan(_corpus(_eegmmidb(shared_data), chunk_hours=0.04))  # one run a chunk
    out = tmp_path / "corpus"
    with chunk_lock(out, "eegmmidb", "eegmmidb-000"):  # its job is running
        with pytest.raises(CorpusError, match="another `diver corpus chunk` is building chunk "
                           "'eegmmidb-000'"):  # fmt: skip
            build_chunk(plan, "eegmmidb-000", out, progress=False)
        assert build_chunk(plan, "eegmmidb-001", out, progress=False).processed == 1
        # a whole-dataset run or a merge waits for every chunk of the dataset
        with pytest.raises(CorpusError, match="is building dataset 'eegmmidb'"):
            build_corpus([_eegmmidb(shared_data)], plan.corpus, out, progress=False)
        with pytest.raises(CorpusError, match="is building dataset 'eegmmidb'"):
            merge_corpus(plan, out)
    # and a chunk waits for a whole-dataset run
    with (out / ".locks" / "eegmmidb.lock").open("w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(CorpusError, match="before building chunk 'eegmmidb-002'"):
            build_chunk(plan, "eegmmidb-002", out, progress=False)


def test_a_recording_in_two_chunks_is_kept_once_and_the_copy_pruned(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a_rest.fif", "b_rest.fif"):  # one recording under two names
        shutil.copy(shared_data.joinpath(*REST), folder / name)
    corpus = _corpus(DatasetConfig("ds", (str(folder),)), chunk_hours=0.1)  # 360 s a chunk
    plan = make_plan(corpus)
    assert [c.sources[0].recording for c in plan.chunks] == ["a_rest", "b_rest"]
    out = tmp_path / "apart"
    for chunk in plan.chunks:  # neither chunk can know of the other's copy
        build_chunk(plan, chunk.name, out, progress=False)
    copy = out / "windows" / "ds" / "b_rest.parquet"
    assert copy.exists()
    with caplog.at_level(logging.WARNING):
        merge_corpus(plan, out, prune=True)
    assert not copy.exists()
    assert f"--prune: removing {copy}" in caplog.text
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("recording")
    assert qc.loc["b_rest", "reason"] == "duplicate of ds/a_rest (same bytes)"
    whole = tmp_path / "whole"
    build_corpus(corpus.datasets, corpus, whole, progress=False)
    _assert_same_corpus(out, whole)
    # the copy's receipt stays: merging again (after another chunk's rerun) finds it built
    merge_corpus(plan, out, prune=True)
    _assert_same_corpus(out, whole)


def test_a_merge_with_a_chunk_not_built_fails_naming_it(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rest = DatasetConfig(name="rest", inputs=(str(shared_data.joinpath(*REST)),))
    eeglab = DatasetConfig(name="eeglab", inputs=(str(shared_data / "eeglab_tutorial"),))
    plan = make_plan(_corpus(rest, eeglab, chunk_hours=1))
    plan_file = tmp_path / "plan.json"
    plan.write(plan_file)
    out = tmp_path / "corpus"
    build_chunk(plan, "rest-000", out, progress=False)
    with pytest.raises(CorpusError, match=r"1 chunk\(s\) of the plan not built: eeglab-000 "):
        merge_corpus(plan, out)
    assert main(["corpus", "merge", "--plan", str(plan_file), "--out", str(out)]) == EXIT_ERROR
    assert "eeglab-000" in capsys.readouterr().err
    assert not (out / "qc.csv").exists()
    with pytest.raises(CorpusError, match="no chunk 'eeglab-001'; its chunks: rest-000, eeglab"):
        build_chunk(plan, "eeglab-001", out, progress=False)


# ------------------------------------------------------------------------- the DAG


def test_the_dag_fans_out_and_a_failed_chunk_reruns_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic EEG dataset (5 recordings, 0.27 h) in two chunks through the local
    profile.  The first run's job for one chunk fails (its lock is held, as by a job that
    is still running), the other chunk is built and the merge does not run; the rerun
    runs that chunk and the merge, nothing else, and the corpus is the one-job run's."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["corpus"]["datasets"] = config["corpus"]["datasets"][:1]  # synth_eeg
    config["corpus"]["chunk_hours"] = 0.2
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    args = ["--profile", "cluster_profiles/local", "--configfile", str(tmp_path / "study.yaml"),
            "--cores", "2", "results/corpus/manifest.csv"]  # fmt: skip
    results = tmp_path / "results"
    locks = results / "corpus" / ".locks" / "chunks"
    locks.mkdir(parents=True)
    with (locks / "synth_eeg-001.lock").open("w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        first = run_snakemake(tmp_path, *args, "--keep-going")
    assert first.returncode != 0
    failed = (results / "logs" / "corpus" / "synth_eeg-001.log").read_text()
    assert "another `diver corpus chunk` is building chunk 'synth_eeg-001'" in failed
    chunks = results / "corpus_plan" / "chunks"
    assert sorted(p.name for p in chunks.iterdir()) == ["synth_eeg-000.json"]
    assert not (results / "corpus" / "qc.csv").exists()

    dry = run_snakemake(tmp_path, *args, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert _job_counts(dry) == {"corpus_chunk": 1, "corpus": 1, "total": 2}
    assert "chunk=synth_eeg-001" in dry.stdout

    rerun = run_snakemake(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert _job_counts(rerun) == {"corpus_chunk": 1, "corpus": 1, "total": 2}
    log = (results / "logs/corpus/synth_eeg-001.log").read_text()
    assert "chunk synth_eeg-001: 2 recordings (2 processed, 0 already done)" in log

    monkeypatch.chdir(tmp_path)  # the config's inputs are relative to the workflow's folder
    study = load_config(results / "config" / "study.yaml")
    build_corpus(study.corpus.datasets, study.corpus, tmp_path / "whole", progress=False)
    _assert_same_corpus(results / "corpus", tmp_path / "whole")


def _job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The first "Job stats" table of a Snakemake run."""
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("\n\n")[0]
    return {job: int(n) for job, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}
