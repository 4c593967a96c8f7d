"""Per-corpus dataset presets (config/datasets/*.yaml) and ``diver datasets check``.

Merge semantics are tested on mappings; the TUEG and NCHSDB presets on genuine EDF files
written here in each corpus's real naming and folder layout, through the corpus stage
(``build_corpus``) and the header-only survey, whose numbers are checked against what
was written.  AJILE12 (NWB) and BIDS iEEG presets each run one recording too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest
import yaml

from diver.cli import main
from diver.config import (
    ConfigError,
    CorpusConfig,
    DatasetConfig,
    config_from_dict,
    load_config,
    validate_config,
)
from diver.corpus.build import build_corpus
from diver.corpus.survey import format_table, survey_datasets, to_json
from diver.presets import SHIPPED_DIR, available_presets, expand_presets, load_preset
from tests.conftest import REPO_ROOT, run_snakemake

SECONDS = 65.0  # two 30 s windows at any rate
PRESETS = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def study(*datasets: dict) -> dict:
    return {"corpus": {"datasets": list(datasets)}}


def one(raw: dict, **kwargs: object) -> DatasetConfig:
    (dataset,) = config_from_dict(raw, **kwargs).corpus.datasets  # type: ignore[arg-type]
    return dataset


def write_edf(path: Path, names: list[str], sfreq: float, seconds: float = SECONDS) -> Path:
    """A genuine EDF (MNE's exporter, edfio): 15 µV noise plus a 10 Hz rhythm per channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names) + int(sfreq))
    n = round(seconds * sfreq)
    rhythm = 10e-6 * np.sin(2 * np.pi * 10.0 * np.arange(n) / sfreq)
    data = rng.normal(0.0, 15e-6, (len(names), n)) + rhythm
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, "eeg"), verbose="error")
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return path


# --- the shipped presets --------------------------------------------------------------


def test_shipped_presets_are_the_spec_corpora() -> None:
    assert PRESETS == [
        "ajile12", "bids_ieeg", "hbn", "nchsdb", "peers_biosemi", "peers_egi", "tueg",
    ]  # fmt: skip
    assert set(available_presets()) == set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_and_merges(name: str) -> None:
    keys = load_preset(SHIPPED_DIR / f"{name}.yaml")
    assert keys and not {"name", "inputs", "preset"} & set(keys)
    dataset = one(study({"name": "x", "preset": name, "inputs": ["data"]}))
    assert dataset.preset == name and dataset.inputs == ("data",) and dataset.name == "x"
    for key, value in keys.items():
        assert getattr(dataset, key) == value, key
    assert dataset.line_freq == 60  # every corpus of SPEC §1 is American


def test_corpus_facts_in_the_presets() -> None:
    get = {name: one(study({"name": "x", "preset": name, "inputs": ["d"]})) for name in PRESETS}
    assert get["hbn"].montage == get["peers_egi"].montage == "GSN-HydroCel-129"
    assert get["peers_biosemi"].montage == "biosemi128"
    assert get["ajile12"].modality == "ieeg" and get["ajile12"].ieeg_type == "ecog"
    assert get["ajile12"].coord_frame == "MNI152NLin2009aSym"
    assert get["bids_ieeg"].highpass == 0.5 and get["bids_ieeg"].harmonics_for(False)
    assert all(get[n].highpass == 0.3 for n in PRESETS if n != "bids_ieeg")
    assert all(get[n].modality == "eeg" for n in ("tueg", "hbn", "nchsdb", "peers_egi"))


def test_datasets_presets_command_lists_them(capsys: pytest.CaptureFixture) -> None:
    assert main(["datasets", "presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{SHIPPED_DIR / name}.yaml" in out for name in PRESETS)
    assert "TUEG, the Temple University Hospital EEG Corpus" in out


def test_diver1_uses_the_presets() -> None:
    datasets = {
        ds.name: ds for ds in load_config(REPO_ROOT / "config" / "diver1.yaml").corpus.datasets
    }
    assert {name: ds.preset for name, ds in datasets.items()} == {
        "ajile12": "ajile12",
        "private_ieeg": "bids_ieeg",
        "tueg": "tueg",
        "hbn": "hbn",
        "nchsdb": "nchsdb",
        "peers_biosemi": "peers_biosemi",
        "peers_egi": "peers_egi",
    }
    assert datasets["private_ieeg"].highpass == 0.5
    assert datasets["tueg"].channel_types == load_preset(SHIPPED_DIR / "tueg.yaml")["channel_types"]
    assert datasets["tueg"].inputs == ("data/raw/tueg",)


# --- merge semantics ------------------------------------------------------------------


def test_a_schema_default_never_overrides_a_preset_value() -> None:
    """bids_ieeg sets keys whose schema defaults differ (modality auto, highpass 0.3,
    notch_harmonics auto): the preset's values survive validation, and survive again
    when the validated (default-filled) config is loaded a second time, as the
    workflow does with the config it writes."""
    raw = study({"name": "ieeg", "preset": "bids_ieeg", "inputs": ["d"]})
    dataset = one(raw)
    assert (dataset.modality, dataset.highpass, dataset.notch_harmonics) == ("ieeg", 0.5, "yes")
    filled = validate_config(raw)
    assert filled["corpus"]["datasets"][0]["highpass"] == 0.5
    assert filled["corpus"]["datasets"][0]["preset"] == "bids_ieeg"  # kept as provenance
    assert one(filled) == dataset
    assert raw == study({"name": "ieeg", "preset": "bids_ieeg", "inputs": ["d"]})  # untouched


def test_study_keys_override_the_preset_and_inputs_name_are_the_studys() -> None:
    dataset = one(
        study(
            {
                "name": "eu_ieeg",
                "preset": "bids_ieeg",
                "inputs": ["a", "b"],
                "line_freq": 50,
                "highpass": 0.3,
                "channel_types": {"DC\\d+": "dc"},
            }
        )
    )
    assert (dataset.line_freq, dataset.highpass) == (50, 0.3)
    assert dataset.channel_types == {"DC\\d+": "dc"}  # replaces the preset's whole
    assert (dataset.modality, dataset.notch_harmonics) == ("ieeg", "yes")  # from the preset
    assert (dataset.name, dataset.inputs) == ("eu_ieeg", ("a", "b"))


def test_unknown_preset_names_dataset_preset_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(study({"name": "mine", "preset": "tuegg", "inputs": ["d"]}))
    message = str(info.value)
    assert "'mine'" in message and "'tuegg'" in message and "corpus.datasets.0" in message
    assert all(name in message for name in PRESETS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inputs: [elsewhere]\n", r"\['inputs'\] may not be set"),
        ("name: other\nline_freq: 50\n", r"\['name'\] may not be set"),
        ("preset: tueg\n", r"\['preset'\] may not be set"),
        ("modalty: eeg\n", r"\(top level\): unknown keys \['modalty'\]"),
        ("line_freq: 55\n", r"line_freq: 55 is not one of"),
        ("channel_types: {X: brain}\n", r"channel_types.X: 'brain' is not one of"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_preset_file_is_an_error_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "mine.yaml").write_text(text)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study({"name": "x", "preset": "mine.yaml", "inputs": ["d"]})))
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(config)
    assert str(tmp_path / "mine.yaml") in str(info.value)
    assert str(config) in str(info.value)


def test_user_presets_by_path_and_beside_the_config(tmp_path: Path) -> None:
    """A path is relative to the config file; a name is looked up in datasets/ beside
    the config (shadowing a shipped preset of that name) before config/datasets."""
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "lab.yaml").write_text("modality: ieeg\nline_freq: 50\n")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "tueg.yaml").write_text("line_freq: 50\n")
    config = tmp_path / "sub" / "study.yaml"
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(
            study(
                {"name": "lab", "preset": "../presets/lab.yaml", "inputs": ["d"]},
                {"name": "tueg", "preset": "tueg", "inputs": ["d"]},
            )
        )
    )
    lab, tueg = load_config(config).corpus.datasets
    assert (lab.modality, lab.line_freq) == ("ieeg", 50)
    assert tueg.channel_types  # sub/datasets does not exist: the shipped tueg preset
    config.rename(tmp_path / "study.yaml")
    (tmp_path / "study.yaml").write_text(
        (tmp_path / "study.yaml").read_text().replace("../presets", "presets")
    )
    lab, tueg = load_config(tmp_path / "study.yaml").corpus.datasets
    assert tueg.line_freq == 50 and tueg.channel_types == {}  # the study's own tueg.yaml
    assert set(available_presets(tmp_path)) == set(PRESETS)


def test_diver_config_finds_presets_beside_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``diver config FILE`` passes only the file name as the source: the folder the
    presets are looked up in is inferred from it."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "own.yaml").write_text("line_freq: 50\n")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study({"name": "x", "preset": "own", "inputs": ["d"]})))
    assert main(["config", str(config)]) == 0
    (dataset,) = json.loads(capsys.readouterr().out)["corpus"]["datasets"]
    assert (dataset["line_freq"], dataset["preset"]) == (50, "own")


def test_a_fully_resolved_entry_does_not_need_its_preset_file(tmp_path: Path) -> None:
    """What ``diver config --write`` writes (every key filled) loads where the preset
    file is not found: the preset has nothing left to give."""
    filled = validate_config(study({"name": "x", "preset": "tueg", "inputs": ["d"]}))
    filled["corpus"]["datasets"][0]["preset"] = "gone-now"
    assert one(filled).channel_types == load_preset(SHIPPED_DIR / "tueg.yaml")["channel_types"]
    assert expand_presets({"corpus": {"datasets": "not a list"}}) == {
        "corpus": {"datasets": "not a list"}
    }  # malformed input is the schema's to report


def test_diver_config_write_keeps_the_merged_values(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study({"name": "n", "preset": "nchsdb", "inputs": ["d"]})))
    out = tmp_path / "resolved.yaml"
    assert main(["config", str(config), "--write", str(out)]) == 0
    written = yaml.safe_load(out.read_text())["corpus"]["datasets"][0]
    assert written["subject_pattern"] == load_preset(SHIPPED_DIR / "nchsdb.yaml")["subject_pattern"]
    assert load_config(out).corpus.datasets == load_config(config).corpus.datasets


# --- TUEG and NCHSDB recordings through the corpus stage --------------------------------

TUEG_EEG = ["FP1", "FP2", "C3", "C4", "T3", "O1", "A1", "CZ", "T1"]
TUEG_NAMES = ["Fp1", "Fp2", "C3", "C4", "T7", "O1", "A1", "Cz"]  # T1 has no 10-05 name
TUEG_OTHER = {  # label -> (type, why) for the REF montage
    "EEG EKG1-REF": "ecg",
    "EMG-REF": "emg",
    "PHOTIC-REF": "stim",
    "IBI": "misc",
    "BURSTS": "misc",
    "SUPPR": "misc",
    "EEG LOC-REF": "eog",
    "EEG ROC-REF": "eog",
    "EEG RESP1-REF": "resp",
    "EEG 26-REF": "misc",
}
TUEG_OTHER_LE = {  # the linked-ears files' spellings
    "EKG": "ecg",
    "PHOTIC PH": "stim",
    "EEG LOC-LE": "eog",
    "ROC": "eog",
    "EEG 30-LE": "misc",
}
# (relative path, sampling rate, reference suffix)
TUEG_FILES = [
    ("edf/000/aaaaaaaa/s001_2015/01_tcp_ar/aaaaaaaa_s001_t000.edf", 250.0, "REF"),
    ("edf/000/aaaaaaaa/s002_2016/01_tcp_ar/aaaaaaaa_s002_t001.edf", 400.0, "REF"),
    ("edf/000/aaaaaaab/s001_2012/02_tcp_le/aaaaaaab_s001_t000.edf", 256.0, "LE"),
]
NCHSDB_EEG = ["EEG F3-M2", "EEG F4-M1", "EEG C3-M2", "EEG C4-M1", "EEG O1-M2", "EEG O2-M1"]
NCHSDB_OTHER = {
    "EOG LOC-M2": "eog",
    "EOG ROC-M1": "eog",
    "E1-M2": "eog",
    "EMG Chin1-Chin2": "emg",
    "Chin1-Chin2": "emg",
    "ECG LA-RA": "ecg",
    "EKG": "ecg",
    "Resp Airflow": "resp",
    "Resp Thoracic": "resp",
    "Resp Abdominal": "resp",
    "Snore": "resp",
    "Resp PTAF": "resp",
    "Capnogram": "resp",
    "EtCO2": "misc",
    "SpO2": "misc",
    "Pleth": "misc",
    "Pulse": "misc",
    "Position": "misc",
    "Leg 1": "emg",
    "LAT": "emg",
    "RAT": "emg",
}
NCHSDB_FILES = [("sleep_data/10001_11111.edf", 256.0), ("sleep_data/10002_22222.edf", 512.0)]


def tueg_labels(ref: str) -> list[str]:
    other = TUEG_OTHER if ref == "REF" else TUEG_OTHER_LE
    return [f"EEG {site}-{ref}" for site in TUEG_EEG] + list(other)


@pytest.fixture(scope="module")
def raw_corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DatasetConfig]:
    root = tmp_path_factory.mktemp("raw")
    for rel, sfreq, ref in TUEG_FILES:
        write_edf(root / "tueg" / rel, tueg_labels(ref), sfreq)
    broken = root / "tueg" / "edf/000/aaaaaaac/s001_2010/01_tcp_ar/aaaaaaac_s001_t000.edf"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"0       this is not an EDF header\n" * 20)
    for rel, sfreq in NCHSDB_FILES:
        write_edf(root / "nchsdb" / rel, NCHSDB_EEG + list(NCHSDB_OTHER), sfreq)
    config = study(
        {"name": "tueg", "preset": "tueg", "inputs": [str(root / "tueg")]},
        {"name": "nchsdb", "preset": "nchsdb", "inputs": [str(root / "nchsdb")]},
    )
    return {ds.name: ds for ds in config_from_dict(config).corpus.datasets}


@pytest.fixture(scope="module")
def built(
    raw_corpora: dict[str, DatasetConfig], tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(raw_corpora.values(), CorpusConfig(), out, progress=False)
    read = {"keep_default_na": False, "dtype": {"subject": str}}
    channels = pd.read_csv(out / "channels.csv", **read)
    for column in ("x", "y", "z"):
        channels[column] = pd.to_numeric(channels[column])
    return pd.read_csv(out / "qc.csv", **read), channels


def test_tueg_subjects_rates_and_windows(built: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    qc = built[0].set_index("recording").loc[lambda d: d["dataset"] == "tueg"]
    readable = qc[qc["status"] != "quarantined"]
    assert sorted(readable["subject"]) == ["aaaaaaaa", "aaaaaaaa", "aaaaaaab"]
    assert set(readable["subject_source"]) == {"pattern"}
    assert sorted(readable["sfreq"].astype(float)) == [250.0, 256.0, 400.0]
    assert set(readable["status"]) == {"kept"}
    assert list(readable["windows_kept"]) == [2, 2, 2]
    assert list(readable["channels_neural"]) == [len(TUEG_EEG)] * 3
    (bad,) = qc[qc["status"] == "quarantined"].itertuples()
    assert bad.subject == "aaaaaaac" and bad.reason.startswith("unreadable")


def test_tueg_channels_kept_and_dropped(built: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    channels = built[1][built[1]["dataset"] == "tueg"]
    for rel, _, ref in TUEG_FILES:
        rows = channels[channels["recording"] == rel.removesuffix(".edf")].set_index("name_raw")
        kept = rows[rows["status"] == "kept"]
        assert list(kept["name"]) == [*TUEG_NAMES, f"EEG T1-{ref}"]
        assert set(kept["type"]) == {"eeg"}
        assert math.isnan(kept.loc[f"EEG T1-{ref}", "x"])  # kept, position unknown
        other = TUEG_OTHER if ref == "REF" else TUEG_OTHER_LE
        for label, kind in other.items():
            assert (rows.loc[label, "type"], rows.loc[label, "status"]) == (
                kind,
                f"non-neural:{kind}",
            ), label


def test_nchsdb_channels_subjects_and_windows(built: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    qc, channels = (t[t["dataset"] == "nchsdb"] for t in built)
    qc = qc.set_index("recording")
    assert list(qc.index) == ["sleep_data/10001_11111", "sleep_data/10002_22222"]
    assert list(qc["subject"]) == ["10001", "10002"]
    assert list(qc["sfreq"].astype(float)) == [256.0, 512.0]
    assert list(qc["windows_kept"]) == [2, 2] and set(qc["status"]) == {"kept"}
    for recording in qc.index:
        rows = channels[channels["recording"] == recording].set_index("name_raw")
        kept = rows[rows["status"] == "kept"]
        assert list(kept["name"]) == ["F3", "F4", "C3", "C4", "O1", "O2"]
        assert kept[["x", "y", "z"]].notna().all().all()  # 10-05 template positions
        for label, kind in NCHSDB_OTHER.items():
            assert rows.loc[label, "status"] == f"non-neural:{kind}", label


# --- diver datasets check -------------------------------------------------------------


def test_survey_counts_what_was_written(
    raw_corpora: dict[str, DatasetConfig], built: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    surveys = {s.dataset: s for s in survey_datasets(raw_corpora.values(), CorpusConfig())}
    tueg, nchsdb = surveys["tueg"], surveys["nchsdb"]
    assert (len(tueg.recordings), len(tueg.unreadable), tueg.subjects) == (4, 1, 2)
    assert tueg.unreadable[0].reason.startswith("unreadable")
    assert tueg.sfreqs() == {250.0: 1, 256.0: 1, 400.0: 1}
    assert tueg.hours == pytest.approx(3 * SECONDS / 3600, rel=1e-6)
    assert tueg.windows == 6 and tueg.window_hours == pytest.approx(6 * 30 / 3600)
    assert tueg.subject_sources() == {"pattern": 4}
    n_ref, n_le = len(tueg_labels("REF")), len(tueg_labels("LE"))
    assert sum(tueg.channel_types().values()) == 2 * n_ref + n_le
    assert tueg.channel_types()["eeg"] == 3 * len(TUEG_EEG)
    assert tueg.channel_types()["eog"] == 2 * 2 + 2
    assert tueg.summary()["channels_kept"] == 3 * len(TUEG_EEG)
    assert (nchsdb.subjects, nchsdb.windows, nchsdb.sfreqs()) == (2, 4, {256.0: 1, 512.0: 1})
    kinds = list(NCHSDB_OTHER.values())
    expected = {k: 2 * kinds.count(k) for k in set(kinds)} | {"eeg": 2 * len(NCHSDB_EEG)}
    assert nchsdb.channel_types() == dict(sorted(expected.items()))
    # the survey's windows are the ones the corpus stage cuts
    qc = built[0].set_index(["dataset", "recording"])
    for survey in surveys.values():
        for r in survey.readable:
            assert r.windows == int(qc.loc[(r.dataset, r.recording), "windows_total"])
    table = format_table(list(surveys.values()), recordings=True)
    assert "unreadable: edf/000/aaaaaaac/s001_2010/01_tcp_ar/aaaaaaac_s001_t000" in table
    assert "250 (1), 256 (1), 400 (1)" in table
    data = json.loads(json.dumps(to_json(list(surveys.values()))))
    assert data["datasets"][0]["preset"] == "tueg"
    assert len(data["datasets"][0]["recording_details"]) == 4


def test_datasets_check_command(
    raw_corpora: dict[str, DatasetConfig], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """JSON output of the command; a missing input is a row with the reason and exit 2."""
    tueg = raw_corpora["tueg"]
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            study(
                {"name": "tueg", "preset": "tueg", "inputs": list(tueg.inputs)},
                {"name": "gone", "preset": "nchsdb", "inputs": [str(tmp_path / "nowhere")]},
            )
        )
    )
    args = ["datasets", "check", "--config", str(config), "--format", "json", "--quiet"]
    assert main([*args, "--dataset", "tueg", "--jobs", "2"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["datasets"]
    assert (row["recordings"], row["unreadable"], row["subjects"], row["windows"]) == (4, 1, 2, 6)
    assert row["sfreqs"] == {"250": 1, "256": 1, "400": 1}
    assert main(args) == 2
    captured = capsys.readouterr()
    gone = json.loads(captured.out)["datasets"][1]
    assert gone["recordings"] == 0 and "does not exist" in gone["error"]
    assert "could not survey ['gone']" in captured.err
    assert main(["datasets", "check", "--config", str(config), "--quiet"]) == 2
    assert "error: dataset 'gone': input" in capsys.readouterr().out


# --- AJILE12 (NWB) and BIDS iEEG: one recording each ------------------------------------


def test_ajile12_preset_on_an_nwb_recording(tmp_path: Path) -> None:
    from tests.test_nwb import SECONDS as NWB_SECONDS
    from tests.test_nwb import SFREQ as NWB_SFREQ
    from tests.test_nwb import counts, write_nwb

    root = tmp_path / "ajile12"
    write_nwb(root / "sub-01" / "sub-01_ses-3_ecephys.nwb", counts(int(NWB_SECONDS * NWB_SFREQ), 8))
    dataset = one(study({"name": "ajile12", "preset": "ajile12", "inputs": [str(root)]}))
    build_corpus([dataset], CorpusConfig(), tmp_path / "out", progress=False)
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False, dtype={"subject": str})
    assert list(qc["subject"]) == ["01"] and list(qc["status"]) == ["kept"]
    channels = pd.read_csv(tmp_path / "out" / "channels.csv", keep_default_na=False)
    kept = channels[channels["status"] == "kept"]
    assert set(kept["coord_frame"]) == {"MNI152NLin2009aSym"}
    assert "ecog" in set(kept["type"])


def test_bids_ieeg_preset_on_a_bids_recording(tmp_path: Path) -> None:
    """Types from channels.tsv (status bad dropped), positions from electrodes.tsv, the
    preset's 0.5 Hz high-pass and harmonics."""
    folder = tmp_path / "bids" / "sub-07" / "ses-01" / "ieeg"
    stem = "sub-07_ses-01_task-rest_run-01"
    names = ["LA1", "LA2", "LA3", "G1", "G2", "ECG1"]
    write_edf(folder / f"{stem}_ieeg.edf", names, 1000.0)
    (tmp_path / "bids" / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.8.0"})
    )
    kinds = ["SEEG", "SEEG", "SEEG", "ECOG", "ECOG", "ECG"]
    status = ["good", "good", "bad", "good", "good", "good"]
    rows = ["name\ttype\tunits\tstatus"] + [
        f"{n}\t{k}\tuV\t{s}" for n, k, s in zip(names, kinds, status, strict=True)
    ]
    (folder / f"{stem}_channels.tsv").write_text("\n".join(rows) + "\n")
    positions = ["name\tx\ty\tz\tsize"] + [
        f"{n}\t{-30 - i}\t{-10 + i}\t{5 * i}\t1" for i, n in enumerate(names[:5])
    ]
    (folder / "sub-07_ses-01_electrodes.tsv").write_text("\n".join(positions) + "\n")
    (folder / "sub-07_ses-01_coordsystem.json").write_text(
        json.dumps({"iEEGCoordinateSystem": "MNI152NLin2009aSym", "iEEGCoordinateUnits": "mm"})
    )
    dataset = one(
        study({"name": "private", "preset": "bids_ieeg", "inputs": [str(tmp_path / "bids")]})
    )
    assert dataset.highpass == 0.5 and dataset.harmonics_for(is_ieeg=True)
    out = tmp_path / "out"
    build_corpus([dataset], CorpusConfig(), out, progress=False)
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False, dtype={"subject": str})
    assert list(qc["subject"]) == ["07"] and list(qc["status"]) == ["kept"]
    channels = pd.read_csv(out / "channels.csv", keep_default_na=False).set_index("name_raw")
    assert list(channels["type"]) == ["seeg", "seeg", "seeg", "ecog", "ecog", "ecg"]
    assert list(channels["status"]) == [
        "kept", "kept", "bids-status:bad", "kept", "kept", "non-neural:ecg",
    ]  # fmt: skip
    assert float(channels.loc["G1", "x"]) == -33.0


# --- the workflow ---------------------------------------------------------------------


def test_workflow_plans_with_the_merged_preset(
    raw_corpora: dict[str, DatasetConfig], tmp_path: Path
) -> None:
    """The Snakefile validates the raw config (defaults filled) and writes it for the
    `diver` commands: the plan the workflow makes must carry the preset's values."""
    config = tmp_path / "study.yaml"
    nchsdb = raw_corpora["nchsdb"]
    config.write_text(
        yaml.safe_dump(
            {
                **study({"name": "nchsdb", "preset": "nchsdb", "inputs": list(nchsdb.inputs)}),
                "grid": [{"family": "mixed", "size": "debug", "epochs": 1}],
            }
        )
    )
    proc = run_snakemake(
        tmp_path, "--configfile", str(config), "--cores", "1", "results/corpus_plan/plan.json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = json.loads((tmp_path / "results/corpus_plan/plan.json").read_text())
    (dataset,) = planned["corpus"]["datasets"]
    preset = load_preset(SHIPPED_DIR / "nchsdb.yaml")
    assert dataset["channel_types"] == preset["channel_types"]
    assert dataset["subject_pattern"] == preset["subject_pattern"]
    assert dataset["modality"] == "eeg" and dataset["preset"] == "nchsdb"
