"""Config values reach rule commands quoted (issue 13, item 1)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, run_snakemake

# Placeholders that are safe unquoted: numbers, and flag strings their helper builds
# with shlex.join (common.smk: cell_args, finetune_flags).
UNQUOTED_OK = {"threads", "params.flags", "params.cell_flags"}


def _shell_strings(text: str) -> list[str]:
    """The string lines of every ``shell:`` directive of a rule file."""
    found, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "shell:":
            inside = True
            continue
        if inside and stripped.startswith('"'):
            found.append(stripped)
        else:
            inside = False
    return found


def test_every_rule_placeholder_is_quoted() -> None:
    files = [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))]
    unquoted = []
    for path in files:
        for line in _shell_strings(path.read_text()):
            for name, spec in re.findall(r"\{([\w.]+)(:\w+)?\}", line):
                if spec != ":q" and name not in UNQUOTED_OK:
                    unquoted.append(f"{path.name}: {{{name}}}")
    assert not unquoted, unquoted
    assert sum(len(_shell_strings(p.read_text())) for p in files) > 10  # found the rules


def test_shell_metacharacters_in_results_dir_are_data(tmp_path: Path) -> None:
    """A results folder with a space, quotes and ``$(...)`` works, and nothing runs."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    hostile = "My Study 'q\" $(touch PWNED) `touch PWNED2`"
    config["results_dir"] = hostile
    config["synth"]["hours"] = 0.05
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / hostile
    targets = [str(Path(hostile) / "tracking" / "parent_run_id.txt"),
               str(Path(hostile) / "synth" / "manifest.json")]
    proc = run_snakemake(
        tmp_path, "--configfile", str(tmp_path / "study.yaml"), "--cores", "1", *targets
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (results / "tracking" / "parent_run_id.txt").read_text().strip()
    assert (results / "synth" / "manifest.json").exists()
    assert (results / "config" / "study.yaml").exists()
    planted = [p for p in tmp_path.rglob("PWNED*")] + list(REPO_ROOT.glob("PWNED*"))
    assert not planted, planted
