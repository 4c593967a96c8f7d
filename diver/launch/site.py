"""Site settings: the one file a user edits to run the study on their SLURM cluster.

``cluster_profiles/slurm/site.yaml`` holds the partition, account, QoS, constraint,
GPU type, the MLflow server, the throughput used to estimate wall times, and the
resources of each model size.  The launcher (training jobs through submitit) and the
Snakefile (the light rules through Snakemake's SLURM executor) both read it, so the
cluster is described in exactly one place.  Its keys, their meaning, constraints and
defaults are in ``diver/schemas/site.schema.yaml``, which :func:`load_site` checks
it against.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from diver.errors import DiverError
from diver.schemas import load_schema, validate


class SiteError(DiverError, ValueError):
    """The site file is missing or wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Resources:
    """What one training job of a model size asks SLURM for.

    ``tasks_per_node`` defaults to one rank per GPU (or one rank when the job has no
    GPUs); ``time_minutes`` of None lets the launcher estimate it from the cell's FLOPs.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int = 1
    mem_gb: float = 8.0
    time_minutes: int | None = None

    @property
    def ranks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


@dataclass(frozen=True)
class Site:
    """A SLURM site (``diver/schemas/site.schema.yaml`` describes each key)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpu_type: str | None = None
    tracking_uri: str | None = None
    flops_per_gpu: float = 1.0e14
    flops_per_cpu_rank: float = 1.0e9
    time_margin: float = 1.5
    setup_minutes: int = 10
    min_time_minutes: int = 10
    max_time_minutes: int = 2880
    signal_delay_s: int = 120
    default: Resources = field(default_factory=Resources)
    sizes: dict[str, Resources] = field(default_factory=dict)
    light_rules: dict[str, Any] = field(default_factory=dict)

    def resources(self, size: str) -> Resources:
        """The resources of ``size``: its own entry over the site default."""
        return self.sizes.get(size, self.default)

    def wall_time_minutes(self, flops: float, resources: Resources) -> int:
        """``--time`` for a job of ``flops``: throughput x ranks, a margin, set-up, bounds.

        An explicit ``time_minutes`` wins.  The estimate is the training FLOPs over the
        configured sustained throughput (per GPU, or per CPU rank when the job has no
        GPUs), times ``time_margin``, plus ``setup_minutes`` for start-up, validation
        and checkpoints, within [min_time_minutes, max_time_minutes].
        """
        if resources.time_minutes is not None:
            return resources.time_minutes
        if resources.gpus_per_node > 0:
            rate = self.flops_per_gpu * resources.nodes * resources.gpus_per_node
        else:
            rate = self.flops_per_cpu_rank * resources.world_size
        minutes = flops / rate / 60.0 * self.time_margin + self.setup_minutes
        return int(min(self.max_time_minutes, max(self.min_time_minutes, math.ceil(minutes))))


_MAPPINGS = ("default", "sizes", "light_rules")


def _yaml11_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with YAML 1.1's exponent strings read as numbers where the schema wants one.

    PyYAML (YAML 1.1) reads ``1.0e14`` -- an exponent without a sign -- as a string;
    it is meant as a number, so the number keys (top level and resources) take it as one.
    """
    schema = load_schema("site")

    def convert(values: Any, properties: dict[str, Any]) -> Any:
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for key, value in values.items():
            if isinstance(value, str) and properties.get(key, {}).get("type") == "number":
                with contextlib.suppress(ValueError):  # else the schema names the key
                    out[key] = float(value)
        return out

    resources = schema["$defs"]["resources"]["properties"]
    out = convert(raw, schema["properties"])
    out["default"] = convert(out.get("default", {}), resources)
    if isinstance(out.get("sizes"), dict):
        out["sizes"] = {size: convert(entry, resources) for size, entry in out["sizes"].items()}
    return out


def load_site(path: str | Path) -> Site:
    """Read and check a site file against ``diver/schemas/site.schema.yaml``; errors name
    the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise SiteError(f"site file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise SiteError(f"site file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SiteError(f"site file {path}: the top level must be a mapping")
    # An empty `sizes:` (YAML null) means none, as leaving the key out does.
    raw = {k: v for k, v in raw.items() if not (k in _MAPPINGS and v is None)}
    data = validate(_yaml11_numbers(raw), "site", source=str(path), error=SiteError)
    # A given key replaces the base's; missing resource keys are inherited, not defaulted.
    default = replace(Resources(), **data.pop("default"))
    sizes = {str(size): replace(default, **entry) for size, entry in data.pop("sizes").items()}
    floats = {k: float(data[k]) for k in ("flops_per_gpu", "flops_per_cpu_rank", "time_margin")}
    return Site(**{**data, **floats}, default=default, sizes=sizes)
