"""envs/ cannot be solved offline: check the files parse and agree with pyproject pins."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO_ROOT


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[\w,]+\])?)==([\w.+\-]+)", req.strip())
        assert match, f"not an exact pin: {req!r}"
        pins[match[1].lower()] = match[2]
    return pins


def test_conda_env_agrees_with_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env_files = sorted((REPO_ROOT / "envs").glob("*.yaml"))
    assert env_files
    for path in env_files:
        env = yaml.safe_load(path.read_text())
        assert env["name"] and env["channels"]
        deps = env["dependencies"]
        assert any(str(d).startswith("python=3.11") for d in deps), path
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        assert _pins(pip) == wanted, f"{path.name} pins differ from pyproject.toml"


def test_no_profile_turns_on_conda() -> None:
    for profile in (REPO_ROOT / "cluster_profiles").glob("*/config.yaml"):
        settings = yaml.safe_load(profile.read_text())
        for key in ("use-conda", "software-deployment-method", "sdm"):
            value = settings.get(key)
            assert not value or "conda" not in str(value), f"{profile}: {key}={value}"
