"""The ``diver`` command: argument parsing and dispatch, nothing else.

Every Snakemake rule runs one of these subcommands, so anything the DAG does a
user can do by hand with the same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from diver.argtypes import positive_float
from diver.atomic import write_text_atomic
from diver.config import (
    ConfigError,
    CorpusConfig,
    DatasetConfig,
    StudyConfig,
    config_from_dict,
    load_config,
    read_config_mapping,
    validate_config,
)
from diver.errors import DiverError
from diver.exitcodes import EXIT_ERROR, EXIT_QUARANTINED

if TYPE_CHECKING:
    from diver.corpus.build import CorpusResult
    from diver.tracking.runs import RunLogger

log = logging.getLogger("diver")


def _study(path: str | None) -> StudyConfig:
    return load_config(path) if path else StudyConfig()


def _parse_input(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the dataset is then named after the path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).stem or "dataset"
    return name, Path(path)


def cmd_config(args: argparse.Namespace) -> int:
    raw = read_config_mapping(args.config)
    source = "<stdin>" if args.config == "-" else args.config
    study = config_from_dict(raw, source=source)
    if args.write is None:
        data = {**asdict(study), "pretrain": study.pretrain.flat()}  # the file's flat keys
        print(json.dumps(data, indent=2, default=str))
        return 0
    resolved = validate_config(raw, source=source)  # the same file with defaults filled
    text = yaml.safe_dump(resolved, sort_keys=True)
    out = Path(args.write)
    if not out.exists() or out.read_text() != text:  # untouched when unchanged
        write_text_atomic(out, text)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from diver.corpus.synth.corpus import write_synthetic_corpus

    summary = write_synthetic_corpus(Path(args.out), hours=args.hours, seed=args.seed)
    print(
        f"{summary.recordings} recordings, {summary.subjects} subjects, "
        f"{summary.total_hours:.2f} h -> {summary.manifest}"
    )
    return 0


def _datasets(
    study: StudyConfig, inputs: Sequence[str], only: Sequence[str]
) -> list[DatasetConfig]:
    configured = {ds.name: ds for ds in study.corpus.datasets}
    if inputs:
        grouped: dict[str, list[str]] = {}
        for spec in inputs:
            name, path = _parse_input(spec)
            grouped.setdefault(name, []).append(str(path))
        datasets = [
            replace(configured[name], inputs=tuple(paths))
            if name in configured
            else DatasetConfig(name=name, inputs=tuple(paths))
            for name, paths in grouped.items()
        ]
    else:
        datasets = list(configured.values())
    if only:
        unknown = sorted(set(only) - {ds.name for ds in datasets})
        if unknown:
            raise ConfigError(f"--dataset names no configured dataset: {unknown}")
        datasets = [ds for ds in datasets if ds.name in only]
    return datasets


def cmd_corpus(args: argparse.Namespace) -> int:
    from diver.corpus.build import build_corpus

    if args.out is None:  # optional in argparse only because the steps have their own
        args.corpus_parser.error("the following arguments are required: --out")
    study = _study(args.config)
    corpus = study.corpus
    if args.jobs is not None:
        corpus = replace(corpus, jobs=args.jobs)
    if args.strict is not None:
        corpus = replace(corpus, strict=args.strict)
    datasets = _datasets(study, args.input or [], args.dataset or [])
    out = Path(args.out)
    with _corpus_stage_run(args, study) as run:
        result = build_corpus(datasets, corpus, out, progress=not args.quiet, prune=args.prune)
        if run is not None:
            _log_corpus(run, corpus, out)
    return _corpus_outcome(result, corpus, out)


def cmd_corpus_plan(args: argparse.Namespace) -> int:
    from diver.corpus.plan import make_plan

    study = _study(args.config)
    datasets = _datasets(study, args.input or [], args.dataset or [])
    corpus = replace(study.corpus, datasets=tuple(datasets))
    if args.chunk_hours is not None:
        corpus = replace(corpus, chunk_hours=args.chunk_hours)
    plan = make_plan(corpus)
    plan.write(Path(args.plan))
    for chunk in plan.chunks:
        print(f"{chunk.name}: {len(chunk.recordings)} recordings, {chunk.hours:.2f} h")
    print(
        f"{len(plan.sources)} recordings of {len(datasets)} dataset(s) in {len(plan.chunks)} "
        f"chunk(s) of at most {corpus.chunk_hours:g} h -> {args.plan}"
    )
    return 0


def cmd_corpus_chunk(args: argparse.Namespace) -> int:
    from diver.corpus.build import build_chunk
    from diver.corpus.plan import CorpusPlan

    plan = CorpusPlan.read(Path(args.plan))
    done = Path(args.done) if args.done else None
    result = build_chunk(
        plan, args.chunk, Path(args.out), jobs=args.jobs, progress=not args.quiet, done=done
    )
    print(
        f"chunk {args.chunk}: {result.recordings} recordings ({result.processed} processed, "
        f"{result.skipped} already done) -> {args.out}"
    )
    return 0


def cmd_corpus_merge(args: argparse.Namespace) -> int:
    from diver.corpus.build import merge_corpus
    from diver.corpus.plan import CorpusPlan

    plan = CorpusPlan.read(Path(args.plan))
    corpus = plan.corpus  # the settings the chunks were built with
    if args.strict is not None:
        corpus = replace(corpus, strict=args.strict)
    out = Path(args.out)
    with _corpus_stage_run(args, _study(args.config)) as run:
        result = merge_corpus(plan, out, prune=args.prune)
        if run is not None:
            _log_corpus(run, corpus, out)
    return _corpus_outcome(result, corpus, out)


def _corpus_stage_run(
    args: argparse.Namespace, study: StudyConfig
) -> AbstractContextManager[RunLogger | None]:
    """The corpus stage's MLflow child run (no run without ``--parent-run``): the one-process
    command's, or the merge's when the stage is spread over jobs."""
    from diver.tracking import TrackingTarget, stage_run

    target = None
    if args.parent_run:
        target = TrackingTarget.from_run_file(study.tracking_uri(), args.parent_run)
    return stage_run(target, stage="corpus", name="corpus")


def _corpus_outcome(result: CorpusResult, corpus: CorpusConfig, out: Path) -> int:
    """Print what the corpus holds; exit 3 under ``corpus.strict`` when a recording was
    quarantined or had every window rejected."""
    print(
        f"{result.recordings} recordings ({result.processed} processed, {result.skipped} "
        f"already done), {result.quarantined} quarantined, {result.qc_rejected} with every "
        f"window rejected by QC, {result.windows} windows -> {out}"
    )
    failed = result.quarantined + result.qc_rejected
    if failed and corpus.strict:
        print(
            f"strict: {result.quarantined} recording(s) quarantined and {result.qc_rejected} "
            f"with no window passing QC, see {out / 'qc.csv'}",
            file=sys.stderr,
        )
        return EXIT_QUARANTINED
    return 0


def _log_corpus(run, corpus, out: Path) -> None:  # type: ignore[no-untyped-def]
    from diver.corpus.folder import summary_metrics
    from diver.tracking import TAG_MANIFEST_SHA256
    from diver.tracking.provenance import file_sha256

    params = {k: v for k, v in asdict(corpus).items() if k not in ("datasets", "qc")}
    params.update({f"qc.{k}": v for k, v in asdict(corpus.qc).items()})
    params["datasets"] = ",".join(ds.name for ds in corpus.datasets)
    run.log_params(params)
    run.set_tags({TAG_MANIFEST_SHA256: file_sha256(out / "manifest.csv")})
    run.log_metrics(summary_metrics(out))
    for name in ("manifest.csv", "qc.csv", "channels.csv"):
        run.log_artifact(out / name, artifact_path="corpus")


def cmd_datasets_check(args: argparse.Namespace) -> int:
    """Survey the config's datasets from their headers (``diver.corpus.survey``): exit
    non-zero when a dataset could not be surveyed at all (a missing input folder)."""
    from tqdm import tqdm

    from diver.corpus.survey import format_table, survey_datasets, to_json

    study = load_config(args.config)
    datasets = _datasets(study, [], args.dataset or [])
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        if name not in bars:
            bars[name] = tqdm(total=total, desc=name, unit="rec", disable=args.quiet)
        bars[name].update(done - bars[name].n)
        if done == total:
            bars[name].close()

    surveys = survey_datasets(datasets, study.corpus, jobs=args.jobs, progress=progress)
    for bar in bars.values():
        bar.close()
    if args.format == "json":
        print(json.dumps(to_json(surveys, recordings=args.recordings), indent=1))
    else:
        print(format_table(surveys, recordings=args.recordings))
    failed = [s.dataset for s in surveys if s.error]
    if failed:
        print(f"diver datasets check: could not survey {failed}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_datasets_presets(args: argparse.Namespace) -> int:
    """List the presets a config's ``preset:`` may name (``diver.presets``)."""
    from diver.presets import available_presets, preset_summary

    base = Path(args.config).parent if args.config else None
    for name, path in available_presets(base).items():
        print(f"{name:<16} {preset_summary(path)}\n{'':<16} {path}")
    return 0


def cmd_track_init(args: argparse.Namespace) -> int:
    from diver.tracking.note import study_note
    from diver.tracking.parent import ensure_parent_run
    from diver.tracking.runid import write_run_id

    study = load_config(args.config)
    run_id = ensure_parent_run(
        study.tracking_uri(),
        study.experiment_name(),
        study.study,
        params={"config": str(Path(args.config).resolve())},
        description=lambda experiment_id: study_note(study, args.config, experiment_id),
    )
    write_run_id(Path(args.out), run_id)
    print(run_id)
    return 0


def cmd_track_server(args: argparse.Namespace) -> int:
    from diver.tracking.server import check_bind, serve

    check_bind(args.host, args.expose)
    serve(Path(args.store), args.host, args.port, args.workers, args.allowed_host, args.auth)
    return 0  # not reached: serve() replaces this process


def cmd_localslurm(args: argparse.Namespace) -> int:
    from diver import localslurm

    if args.action == "start":
        paths = localslurm.start(nodes=args.nodes)
        print(
            f"local SLURM cluster up, {args.nodes} node(s) "
            f"(config {localslurm.SYSTEM_CONF} -> {paths.conf})"
        )
    elif args.action == "stop":
        stopped = localslurm.stop()
        print(f"stopped or removed: {', '.join(stopped) or 'nothing was running'}")
    else:
        for daemon, running in localslurm.status().items():
            print(f"{daemon}: {'running' if running else 'stopped'}")
    return 0


def cmd_model_params(args: argparse.Namespace) -> int:
    from diver.model.config import PUBLISHED_SIZES, SIZES, model_config
    from diver.model.mup_setup import count_parameters

    sizes = args.size or [*PUBLISHED_SIZES, *(s for s in SIZES if s.startswith("debug"))]
    rows = [
        (size, patch, count_parameters(model_config(size, patch), part=args.part))
        for size in sizes
        for patch in ("1s", "0.1s")
    ]
    if args.format == "csv":
        print("size,patch,params")
        for size, patch, n in rows:
            print(f"{size},{patch},{n}")
    else:
        for size, patch, n in rows:
            print(f"{size:>9} {patch:>5} {n / 1e6:10.2f}M")
    return 0


def cmd_model_import(args: argparse.Namespace) -> int:
    from diver.model.load import import_checkpoint

    config = import_checkpoint(args.source, args.out)
    print(
        f"imported {args.source}: d_model {config.d_model}, depth {config.depth}, "
        f"{config.patch} patches -> {args.out}"
    )
    return 0


def _corpus_input_args(p: argparse.ArgumentParser) -> None:
    """The datasets of a corpus run or plan: the config's, ``--input`` folders, ``--dataset``."""
    p.add_argument("--config", help="study config; its corpus section gives datasets and settings")
    p.add_argument(
        "--input",
        action="append",
        metavar="[NAME=]PATH",
        help="a recording or folder; repeatable. NAME is the dataset (default: the folder name); "
        "a NAME of the config's datasets takes that dataset's settings",
    )
    p.add_argument("--dataset", action="append", help="process only this configured dataset")


def _corpus_finish_args(p: argparse.ArgumentParser, prune_help: str) -> None:
    """What a step writing the tables takes: pruning, strictness, tracking."""
    p.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 3 when any recording was quarantined (default: the config's corpus.strict)",
    )
    p.add_argument("--parent-run", help="file holding the MLflow parent run id; log a child run")
    p.add_argument("--prune", action="store_true", help=prune_help)


def cmd_where(args: argparse.Namespace) -> int:
    from diver.where import study_locations, where_text

    study = load_config(args.config)
    if args.format == "json":
        print(json.dumps(study_locations(study), indent=2))
    else:
        print(where_text(study))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from diver.tracking.compare import compare_runs, render

    study = load_config(args.config)
    comparison = compare_runs(
        study.tracking_uri(),
        study.experiment_name(),
        study.study,
        stage=args.stage,
        where=args.where,
        sort=args.sort,
        descending=args.descending,
        metrics=args.metric,
    )
    print(render(comparison, args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diver", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate a study config and print it with defaults")
    p.add_argument("config", help="YAML config file (- reads standard input)")
    p.add_argument(
        "--write",
        metavar="FILE",
        help="write the validated config with defaults filled in (YAML) instead of printing",
    )
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "where", help="where a study's results, report and MLflow store are (and how to browse)"
    )
    p.add_argument("--config", default="config/config.yaml", help="study config (YAML)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_where)

    from diver.tracking.names import STAGES

    p = sub.add_parser(
        "compare",
        help="a study's runs side by side (the table MLflow shows), sorted by a metric",
        description="Print the runs of one stage of the study as a table, read from the "
        "study's MLflow store: the params that say what each run is (a grid cell's family, "
        "patch, size, data_fraction, subjects, epochs), its metrics (val_loss, tokens, "
        "unique_tokens, flops, ...), status and run id. CSV and JSON carry MLflow's column "
        "names and unrounded values.",
    )
    p.add_argument("--config", default="config/config.yaml", help="study config (YAML)")
    p.add_argument("--stage", choices=STAGES, default="pretrain", help="default: pretrain")
    p.add_argument(
        "--where",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose param KEY is VALUE (size=debug); prefixed keys too: "
        "tags.NAME=..., metrics.NAME=NUMBER, attributes.status=FINISHED",
    )
    p.add_argument(
        "--sort", metavar="METRIC", help="sort by this metric (default: val_loss for pretrain)"
    )
    p.add_argument(
        "--descending",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sort high-first (default: low-first, scores of fine-tuning high-first)",
    )
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="a metric column instead of the stage's defaults (repeat for several)",
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("synth", help="write a synthetic EEG + iEEG corpus (real file formats)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--hours", type=float, default=0.5, help="total recording hours")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "corpus",
        help="raw recordings -> QA/QC'd Parquet windows (SPEC §1)",
        description="Build the corpus in one process (diver corpus --config C --out DIR), "
        "or spread over jobs in three steps: `plan` splits every dataset's recordings into "
        "chunks of about corpus.chunk_hours recording-hours, `chunk` builds one chunk (any "
        "number side by side, on other machines too), `merge` writes the tables once every "
        "chunk is built. The steps' output equals the one-process run's.",
    )
    _corpus_input_args(p)
    p.add_argument("--out", help="corpus folder (required)")
    p.add_argument("--jobs", type=int, help="recordings processed in parallel")
    _corpus_finish_args(
        p,
        "delete the shards and receipts of recordings no longer among the inputs of the "
        "datasets built (listed as removed); without it their presence is an error",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_corpus, corpus_parser=p)
    steps = p.add_subparsers(dest="corpus_step", title="steps (a corpus spread over jobs)")
    s = steps.add_parser("plan", help="list the recordings and split them into chunks (a file)")
    _corpus_input_args(s)
    s.add_argument(
        "--chunk-hours",
        type=positive_float,
        help="recording-hours per chunk (default: the config's corpus.chunk_hours)",
    )
    s.add_argument("--plan", required=True, help="the plan file to write (JSON)")
    s.set_defaults(func=cmd_corpus_plan)
    s = steps.add_parser("chunk", help="build one chunk of a plan (its shards and receipts)")
    s.add_argument("--plan", required=True, help="the plan file (`diver corpus plan`)")
    s.add_argument("--chunk", required=True, help="the chunk's name, as the plan lists it")
    s.add_argument("--out", required=True, help="corpus folder")
    s.add_argument("--jobs", type=int, help="recordings processed in parallel")
    s.add_argument("--done", metavar="FILE", help="write this file once the chunk is built")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_corpus_chunk)
    s = steps.add_parser(
        "merge", help="qc.csv, channels.csv and manifest.csv once every chunk is built"
    )
    s.add_argument("--plan", required=True, help="the plan file (`diver corpus plan`)")
    s.add_argument("--out", required=True, help="corpus folder")
    s.add_argument("--config", help="study config (where --parent-run's tracking server is)")
    _corpus_finish_args(
        s,
        "delete (listed as removed) the shards and receipts of recordings not in the plan, "
        "and the shards of copies of a recording kept once: the planned datasets' folders "
        "then hold what the one-process run writes; without it files of recordings not in "
        "the plan are an error",
    )
    s.set_defaults(func=cmd_corpus_merge)

    p = sub.add_parser("datasets", help="the corpus datasets of a config, before building")
    datasets = p.add_subparsers(dest="datasets_command", required=True)
    d = datasets.add_parser(
        "check",
        help="what each dataset holds, from file headers only",
        description="For each dataset of the config: recordings found, files that cannot "
        "be opened (and why), sampling rates, subjects (and where their ids came from), "
        "channel types as the corpus stage would type them, recorded hours and the hours "
        "of whole windows the build would cut (before QA/QC). Reads headers only, never "
        "samples. Exits 2 when a dataset's input is missing (its row says so).",
    )
    d.add_argument("--config", required=True, help="study config")
    d.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    d.add_argument("--format", choices=["table", "json"], default="table")
    d.add_argument(
        "--recordings", action="store_true", help="also list every recording (table and json)"
    )
    d.add_argument("--jobs", type=int, default=1, help="headers read in parallel (processes)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_datasets_check)
    d.set_defaults(func=cmd_datasets_check)
    d = datasets.add_parser(
        "presets",
        help="the dataset presets a config's `preset:` may name",
        description="Presets shipped in the repository's config/datasets, and with --config "
        "those in datasets/ beside that config (which shadow shipped ones of the same name).",
    )
    d.add_argument("--config", help="study config whose datasets/ folder to include")
    d.set_defaults(func=cmd_datasets_presets)

    p = sub.add_parser("model", help="the DIVER-1 model family (SPEC §2)")
    model = p.add_subparsers(dest="model_command", required=True)
    m = model.add_parser("params", help="parameter counts per size and patch (meta device)")
    m.add_argument("--format", choices=["csv", "table"], default="table")
    m.add_argument(
        "--part",
        choices=["total", "encoder"],
        default="total",
        help="total (with reconstruction heads, as SPEC §2's table) or encoder only",
    )
    m.add_argument("--size", action="append", help="only this size (repeatable)")
    m.set_defaults(func=cmd_model_params)
    m = model.add_parser(
        "import",
        help="the authors' DIVER-1 checkpoint -> a diver model.pt",
        description="Convert a checkpoint of the authors' code (their released files: "
        "{'model_state_dict': ...}; DeepSpeed's {'module': ...}; or a bare state dict; fp32 or "
        "bf16; 1 s or 0.1 s patches; any depth) into a diver model.pt for diver finetune "
        "--pretrained, diver embed and diver pretrain --init-from. Width, depth and patch are "
        "read off the tensor shapes. Nothing is written when the file does not fit.",
    )
    m.add_argument("--from", dest="source", required=True, metavar="FILE", help="checkpoint")
    m.add_argument("--out", required=True, help="the model.pt to write")
    m.set_defaults(func=cmd_model_import)

    from diver.train.cli import register as register_pretrain

    register_pretrain(sub)

    from diver.scaling.cli import register as register_scaling

    register_scaling(sub)
    from diver.finetune.cli import register as register_finetune

    register_finetune(sub)

    from diver.report.cli import register as register_report

    register_report(sub)

    from diver.launch.cli import register as register_launch

    register_launch(sub)

    from diver.hpsearch.cli import register as register_hpsearch

    register_hpsearch(sub)

    p = sub.add_parser("track", help="MLflow tracking")
    track = p.add_subparsers(dest="track_command", required=True)
    t = track.add_parser("init", help="create (once) the study's experiment and parent run")
    t.add_argument("--config", required=True, help="study config")
    t.add_argument("--out", required=True, help="file to write the parent run id to")
    t.set_defaults(func=cmd_track_init)
    t = track.add_parser(
        "server",
        help="run the study's MLflow server (on a cluster's login node; jobs log to it)",
    )
    t.add_argument("--store", required=True, help="folder for the runs database and artifacts")
    t.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    t.add_argument(
        "--expose",
        action="store_true",
        help="allow a non-loopback --host (then always with authentication, --auth)",
    )
    t.add_argument(
        "--auth",
        action="store_true",
        help="require the generated credentials (STORE/auth/credentials) on loopback too",
    )
    t.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    t.add_argument("--workers", type=int, default=2, help="server worker processes")
    t.add_argument(
        "--allowed-host", action="append", default=[], help="extra Host header to accept"
    )
    t.set_defaults(func=cmd_track_server)

    p = sub.add_parser(
        "localslurm",
        help="start/stop a real SLURM cluster on this machine (tests, demos; root only)",
        description="A real SLURM (slurmctld, slurmd, slurmdbd on a private MariaDB, munge) "
        "with two fake GPUs per node, for tests and demos. Root only; refuses to run where "
        "SLURM belongs to a real site. --nodes N simulates N nodes, each slurmd in its own "
        "network and UTS namespace on a private bridge (198.19.0.0/24), names in marked "
        "/etc/hosts lines; stop removes them. Needs the Debian packages "
        "slurmctld slurmd slurm-client munge slurmdbd mariadb-server.",
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument(
        "--nodes", type=int, default=1, help="nodes to simulate at start (default 1: localhost)"
    )
    p.set_defaults(func=cmd_localslurm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (DiverError, FileNotFoundError) as exc:
        print(f"diver {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
