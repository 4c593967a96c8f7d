"""Find a dataset's recordings, the sidecar files that describe them, and their subject.

A dataset's ``inputs`` are files or folders (searched recursively).  Every file is
one of three things:

* a recording: an extension that :func:`mne.io.read_raw` dispatches to an EEG/iEEG
  reader (an ``.mff`` or ``.mefd`` folder counts as one file), or ``.nwb``;
* a companion or sidecar (``.vmrk``, ``.fdt``, ``.tsv``, ``.json``, a BrainVision
  ``.eeg`` ...), skipped silently because its recording is listed instead;
* anything else, listed with ``problem`` set so that it is quarantined with a reason
  rather than silently lost from the corpus.

Subjects come from BIDS names, then from the dataset's ``subject_pattern``, then the
recording id itself (with a warning) -- never from EDF patient fields, which
anonymised files fill with placeholders such as ``X X X X``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from diver.config import ConfigError, DatasetConfig

log = logging.getLogger(__name__)

# Extensions mne.io.read_raw dispatches to EEG/iEEG readers (MEG, fNIRS and eye
# tracking readers are left out on purpose), plus NWB, which diver reads itself
# (diver.corpus.nwb).  '.dat' is decided per file below.
RECORDING_EXTENSIONS = frozenset(
    {
        ".edf", ".bdf", ".gdf", ".vhdr", ".ahdr", ".set", ".fif", ".fif.gz", ".cnt",
        ".mff", ".eeg", ".mefd", ".nxe", ".lay", ".ns3", ".data", ".cdt", ".nedf",
        ".nwb",
    }
)  # fmt: skip
FOLDER_RECORDINGS = frozenset({".mff", ".mefd"})
# Files that belong to a recording listed elsewhere, or document the dataset.
COMPANION_EXTENSIONS = frozenset(
    {
        ".vmrk", ".amrk", ".fdt", ".bvct", ".tsv", ".tsv.gz", ".json", ".txt", ".md",
        ".rst", ".csv", ".pnt", ".21e", ".log", ".cmt", ".elc", ".sfp", ".pos", ".locs",
        ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".html", ".htm", ".yaml",
        ".yml", ".xml", ".dap", ".rs3", ".cdt.dpa", ".cdt.cef", ".cef", ".head",
        ".nii", ".nii.gz", ".mgz", ".gii", ".bval", ".bvec", ".zip", ".gz", ".tar",
        ".mat", ".py", ".m", ".ipynb", ".sh", ".r",
    }
)  # fmt: skip
COMPANION_NAMES = frozenset({"readme", "changes", "license", "citation", "authors"})
# BIDS folders beside sub-*/ that hold copies or code, never the raw recordings.
BIDS_SKIP_FOLDERS = frozenset({"derivatives", "sourcedata", "code"})
BIDS_DATATYPES = frozenset({"eeg", "ieeg"})

_MULTI_SUFFIXES = (".fif.gz", ".tsv.gz", ".nii.gz", ".cdt.dpa", ".cdt.cef")
_SUB_DIR = re.compile(r"^sub-([A-Za-z0-9]+)$")
_DATAFILE = re.compile(r"^\s*DataFile\s*=\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class RecordingSource:
    """One recording to read, with everything discovery learnt about it.

    ``recording`` is the path relative to the input root it was found under (posix,
    extension removed), so it is unique within the dataset and stable across runs.
    A non-empty ``problem`` means: quarantine without reading.
    """

    dataset: str
    path: Path
    recording: str
    subject: str
    subject_source: str  # 'bids' | 'pattern' | 'recording'
    bids_datatype: str | None
    channels_tsv: Path | None
    electrodes_tsv: Path | None
    coordsystem_json: Path | None
    problem: str = ""


def extension(path: Path) -> str:
    """Lower-case extension, keeping known double suffixes such as ``.fif.gz``."""
    name = path.name.lower()
    for suffix in _MULTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return path.suffix.lower()


def strip_extension(name: str) -> str:
    ext = extension(Path(name))
    return name[: len(name) - len(ext)] if ext else name


def bids_entities(name: str) -> tuple[dict[str, str], str] | None:
    """Entities and suffix of a BIDS file name (``sub-01_task-x_ieeg.edf``), else None."""
    parts = strip_extension(name).split("_")
    if len(parts) < 2 or not parts[0].startswith("sub-") or "-" in parts[-1]:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            return None
        entities[key] = value
    return entities, parts[-1]


# --- which files are recordings -------------------------------------------------------


def _brainvision_data_files(folder: Path, names: list[str]) -> set[str]:
    """Names of the binary files that BrainVision headers in ``folder`` point to.

    BrainVision data files are ``.eeg`` -- the same extension as Nihon Kohden
    recordings -- so they are told apart by being some header's ``DataFile=`` (or
    sharing a header's stem, for headers that cannot be read).
    """
    taken: set[str] = set()
    for name in names:
        if extension(Path(name)) not in {".vhdr", ".ahdr"}:
            continue
        taken.add(strip_extension(name) + ".eeg")
        try:
            text = (folder / name).read_text(encoding="latin-1")
        except OSError:
            continue
        taken.update(Path(m.strip()).name for m in _DATAFILE.findall(text))
    return {t.lower() for t in taken}


def _dat_is_recording(path: Path, siblings: set[str]) -> bool:
    """A ``.dat`` is a recording when it is BCI2000 (text header) or Curry 7 (``.dap``).

    ``.dat`` is also Persyst's data file (beside a ``.lay``) and a generic name for
    anything, so without one of those signs it is treated as a companion.
    """
    stem = path.name[: -len(".dat")].lower()
    if stem + ".lay" in siblings:
        return False
    if stem + ".dap" in siblings or stem + ".rs3" in siblings:
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(10) == b"HeaderLen="
    except OSError:
        return False


def _classify(path: Path, siblings: set[str], bv_data: set[str]) -> str | None:
    """'recording', 'companion', or a problem message for one file or folder unit."""
    ext = extension(path)
    lower = path.name.lower()
    if ext == ".eeg" and lower in bv_data:
        return "companion"
    if ext == ".dat":
        return "recording" if _dat_is_recording(path, siblings) else "companion"
    if ext in RECORDING_EXTENSIONS:
        return "recording"
    if ext in COMPANION_EXTENSIONS or lower in COMPANION_NAMES:
        return "companion"
    if not ext:
        return "no file extension"
    return f"unknown extension {ext!r}"


BROKEN_LINK = "broken link (target missing; annexed content not fetched?)"
UNREADABLE = "unreadable folder"


def _size_problem(path: Path) -> str:
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way
            return "symlink loop"
        except OSError as exc:
            return "symlink loop" if exc.errno == errno.ELOOP else BROKEN_LINK
    if not path.exists():
        return BROKEN_LINK
    if path.is_dir():
        try:
            return "" if any(path.iterdir()) else "empty folder"
        except OSError as exc:
            return f"{UNREADABLE} ({exc.strerror or exc})"
    return "empty file (0 bytes)" if path.stat().st_size == 0 else ""


def _candidates(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file (or folder-recording) under ``root`` with a problem ("" for none),
    hidden ones and BIDS extras skipped.

    Folders that cannot be listed come back as problems ("unreadable folder"), so they
    are quarantined rows rather than silently missing.  Symlinked folders are followed,
    each real folder once (a link back up the tree is not a loop forever).
    """
    if root.is_file() or extension(root) in FOLDER_RECORDINGS:
        yield root, ""
        return
    unreadable: list[OSError] = []
    visited = {root.resolve()}
    for folder, dirnames, filenames in os.walk(root, onerror=unreadable.append, followlinks=True):
        while unreadable:
            exc = unreadable.pop()
            yield Path(exc.filename), f"{UNREADABLE} ({exc.strerror or exc})"
        here = Path(folder)
        is_bids_root = "dataset_description.json" in filenames
        keep = []
        # Real folders before links to them, so a folder keeps its own name as its id.
        for d in sorted(dirnames, key=lambda name: ((here / name).is_symlink(), name)):
            if d.startswith(".") or (is_bids_root and d in BIDS_SKIP_FOLDERS):
                continue
            if extension(Path(d)) in FOLDER_RECORDINGS:
                yield here / d, ""
                continue
            try:
                real = (here / d).resolve(strict=True)
            except (OSError, RuntimeError):
                yield here / d, "symlink loop"
                continue
            if real in visited:
                log.info("%s: already walked as %s; not followed twice", here / d, real)
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name, ""
    while unreadable:
        exc = unreadable.pop()
        yield Path(exc.filename), f"{UNREADABLE} ({exc.strerror or exc})"


# --- sidecars -----------------------------------------------------------------------


def _compatible(sidecar: dict[str, str], recording: dict[str, str], ignore: set[str]) -> bool:
    """No entity present in both names takes different values (``ignore`` aside)."""
    return all(
        recording[key] == value
        for key, value in sidecar.items()
        if key in recording and key not in ignore
    )


def _bids_sidecars(path: Path) -> tuple[Path | None, Path | None, Path | None]:
    """channels.tsv, electrodes.tsv and coordsystem.json for a BIDS-named recording.

    The channels file may leave out entities (BIDS inheritance), so the most specific
    one whose entities are all the recording's wins.  Electrodes files have no task or
    run; any whose entities do not contradict the recording's qualify, ``space-MNI*``
    first, then the one sharing most entities.
    """
    parsed = bids_entities(path.name)
    assert parsed is not None
    entities = parsed[0]
    folder = path.parent
    channels: list[tuple[int, str, Path]] = []
    electrodes: list[tuple[bool, int, str, Path]] = []
    for candidate in folder.iterdir():
        info = bids_entities(candidate.name)
        if info is None or candidate.name.startswith("."):
            continue
        ents, suffix = info
        ext = extension(candidate)
        if (
            suffix == "channels"
            and ext == ".tsv"
            and all(entities.get(k) == v for k, v in ents.items())
        ):
            channels.append((len(ents), candidate.name, candidate))
        elif suffix == "electrodes" and ext == ".tsv" and _compatible(ents, entities, {"space"}):
            shared = sum(entities.get(k) == v for k, v in ents.items())
            not_mni = not ents.get("space", "").upper().startswith("MNI")
            electrodes.append((not_mni, -shared, candidate.name, candidate))
    channels_tsv = max(channels)[2] if channels else None
    electrodes_tsv = min(electrodes)[3] if electrodes else None
    coordsystem = _bids_coordsystem(electrodes_tsv) if electrodes_tsv else None
    return channels_tsv, electrodes_tsv, coordsystem


def _bids_coordsystem(electrodes_tsv: Path) -> Path | None:
    """Same prefix as the electrodes file, else the most specific compatible one."""
    prefix = electrodes_tsv.name[: -len("_electrodes.tsv")]
    exact = electrodes_tsv.with_name(prefix + "_coordsystem.json")
    if exact.is_file():
        return exact
    parsed = bids_entities(electrodes_tsv.name)
    assert parsed is not None
    ents = parsed[0]
    found = []
    for candidate in electrodes_tsv.parent.glob("*_coordsystem.json"):
        info = bids_entities(candidate.name)
        if info and all(ents.get(k) == v for k, v in info[0].items()):
            found.append((len(info[0]), candidate.name, candidate))
    return max(found)[2] if found else None


def _stem_sidecars(path: Path) -> tuple[Path | None, Path | None, Path | None]:
    """Non-BIDS pairing: ``x_channels.tsv``, ``x_electrodes.tsv``, ``x_coordsystem.json``."""
    stem = strip_extension(path.name)

    def beside(suffix: str) -> Path | None:
        candidate = path.with_name(stem + suffix)
        return candidate if candidate.is_file() else None

    return beside("_channels.tsv"), beside("_electrodes.tsv"), beside("_coordsystem.json")


def find_sidecars(path: Path) -> tuple[Path | None, Path | None, Path | None]:
    """(channels_tsv, electrodes_tsv, coordsystem_json) for a recording path."""
    if bids_entities(path.name) is not None:
        return _bids_sidecars(path)
    return _stem_sidecars(path)


# --- subjects -----------------------------------------------------------------------


def _bids_subject(path: Path) -> str | None:
    parsed = bids_entities(path.name)
    if parsed is not None:
        return parsed[0]["sub"]
    for parent in path.parents:
        match = _SUB_DIR.match(parent.name)
        if match:
            return match.group(1)
    return None


def find_subject(path: Path, shown: str, recording: str, pattern: str | None) -> tuple[str, str]:
    """(subject, subject_source) for a recording.

    ``shown`` is the path relative to its input root; the pattern is searched there
    first, then in the input-as-configured path (so a subject folder named in the
    input itself still counts).  A pattern without a group contributes its whole match.
    """
    subject = _bids_subject(path)
    if subject:
        return subject, "bids"
    if pattern:
        regex = re.compile(pattern)
        for text in (shown, path.as_posix()):
            match = regex.search(text)
            if match:
                value = match.group(1) if regex.groups else match.group(0)
                if value:
                    return value, "pattern"
    return recording, "recording"


# --- the walk -----------------------------------------------------------------------


def _source(dataset: DatasetConfig, path: Path, rel: str, problem: str) -> RecordingSource:
    recording = strip_extension(rel)
    subject, subject_source = find_subject(path, rel, recording, dataset.subject_pattern)
    bids_datatype = None
    if path.parent.name in BIDS_DATATYPES and (
        path.name.startswith("sub-") or any(_SUB_DIR.match(p.name) for p in path.parents)
    ):
        bids_datatype = path.parent.name
    channels_tsv = electrodes_tsv = coordsystem_json = None
    if problem == "":
        channels_tsv, electrodes_tsv, coordsystem_json = find_sidecars(path)
    return RecordingSource(
        dataset=dataset.name,
        path=path,
        recording=recording,
        subject=subject,
        subject_source=subject_source,
        bids_datatype=bids_datatype,
        channels_tsv=channels_tsv,
        electrodes_tsv=electrodes_tsv,
        coordsystem_json=coordsystem_json,
        problem=problem,
    )


def _walk_input(dataset: DatasetConfig, given: str) -> tuple[Path, list[tuple[Path, str, str]]]:
    """The input's root folder and (path, id-with-extension relative to it, problem)."""
    root = Path(given)
    if not root.exists():
        raise FileNotFoundError(f"dataset {dataset.name!r}: input {given!r} does not exist")
    base = root.parent if root.is_file() or extension(root) in FOLDER_RECORDINGS else root
    found = []
    listings: dict[Path, tuple[set[str], set[str]]] = {}
    for path, walk_problem in _candidates(root):
        if walk_problem:  # an unreadable folder or a symlink loop: a quarantined row
            found.append((path, path.relative_to(base).as_posix(), walk_problem))
            continue
        folder = path.parent
        if folder not in listings:
            names = sorted(os.listdir(folder))
            listings[folder] = ({n.lower() for n in names}, _brainvision_data_files(folder, names))
        siblings, bv_data = listings[folder]
        kind = _classify(path, siblings, bv_data)
        if kind == "companion":
            if path == root:
                log.warning(
                    "dataset %s: input %s is a companion file, not a recording", dataset.name, given
                )
            continue
        problem = _size_problem(path) if kind == "recording" else kind
        found.append((path, path.relative_to(base).as_posix(), problem))
    return base, found


def discover_recordings(dataset: DatasetConfig) -> list[RecordingSource]:
    """Every recording under the dataset's inputs, sorted by recording id.

    Inputs may be files or folders (recursive; hidden entries, and ``derivatives/``,
    ``sourcedata/`` and ``code/`` beside a BIDS ``dataset_description.json``, skipped:
    they hold copies, not raw data).  A missing input raises FileNotFoundError naming
    the path and the dataset.  A file reached from two inputs is listed once; two
    different files with the same id are told apart by their input folder's name.
    """
    seen: set[Path] = set()
    entries: list[tuple[Path, str, str, str]] = []
    for given in dataset.inputs:
        base, found = _walk_input(dataset, given)
        root_name = base.resolve().name
        for path, rel, problem in found:
            try:
                key = path.resolve()
            except RuntimeError:  # a symlink loop (its row says so)
                key = path.absolute()
            if key in seen:
                continue
            seen.add(key)
            entries.append((path, rel, problem, root_name))
    counts = Counter(strip_extension(rel) for _, rel, _, _ in entries)
    clashing = {i for i, n in counts.items() if n > 1}
    prefixed = Counter(
        f"{root}/{strip_extension(rel)}"
        for _, rel, _, root in entries
        if strip_extension(rel) in clashing
    )
    sources = []
    for path, rel, problem, root_name in entries:
        if strip_extension(rel) in clashing:
            rel = f"{root_name}/{rel}"
            if prefixed[strip_extension(rel)] > 1:
                # same stem twice in one folder (x.edf beside x.gdf): keep the extension
                rel = str(Path(rel).with_name(Path(rel).name.replace(".", "_")))
        sources.append(_source(dataset, path, rel, problem))
    dupes = sorted(r for r, n in Counter(s.recording for s in sources).items() if n > 1)
    if dupes:
        raise ConfigError(
            f"dataset {dataset.name!r}: recording ids clash across inputs: {dupes} (two input "
            "folders of the same name hold files of the same name); give them their own "
            "datasets, or inputs whose folder names differ"
        )
    unnamed = [s for s in sources if s.subject_source == "recording"]
    if unnamed:
        log.warning(
            "dataset %s: %d of %d recordings have no BIDS subject and no subject_pattern "
            "match (e.g. %s); each is taken as its own subject",
            dataset.name,
            len(unnamed),
            len(sources),
            unnamed[0].path,
        )
    return sorted(sources, key=lambda s: s.recording)
