"""Site settings: the one file a user edits to run the study on their SLURM cluster.

``cluster_profiles/slurm/site.yaml`` holds the partition, account, QoS, constraint,
GPU type, the MLflow server, the throughput used to estimate wall times, and the
resources of each model size.  The launcher (training jobs through submitit) and the
Snakefile (the light rules through Snakemake's SLURM executor) both read it, so the
cluster is described in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from diver.errors import DiverError


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
    """A SLURM site (see ``cluster_profiles/slurm/site.yaml`` for each key's meaning)."""

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


_RESOURCE_KEYS = {f.name for f in fields(Resources)}
_SITE_KEYS = {f.name for f in fields(Site)}


def _resources(raw: Any, where: str, base: Resources) -> Resources:
    if not isinstance(raw, dict):
        raise SiteError(f"{where} must be a mapping of resource settings")
    unknown = sorted(set(raw) - _RESOURCE_KEYS)
    if unknown:
        raise SiteError(f"{where}: unknown keys {unknown}; known: {sorted(_RESOURCE_KEYS)}")
    values = replace(base, **raw)
    for key in ("nodes", "cpus_per_task"):
        if not isinstance(getattr(values, key), int) or getattr(values, key) < 1:
            raise SiteError(f"{where}.{key} must be a positive integer")
    if not isinstance(values.gpus_per_node, int) or values.gpus_per_node < 0:
        raise SiteError(f"{where}.gpus_per_node must be a non-negative integer")
    if values.mem_gb <= 0:
        raise SiteError(f"{where}.mem_gb must be positive")
    return values


def load_site(path: str | Path) -> Site:
    """Read and check a site file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise SiteError(f"site file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise SiteError(f"site file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SiteError(f"site file {path}: the top level must be a mapping")
    unknown = sorted(set(raw) - _SITE_KEYS)
    if unknown:
        raise SiteError(f"site file {path}: unknown keys {unknown}; known: {sorted(_SITE_KEYS)}")
    try:
        default = _resources(raw.pop("default", {}) or {}, f"{path}: default", Resources())
        sizes = {
            str(size): _resources(entry, f"{path}: sizes.{size}", default)
            for size, entry in (raw.pop("sizes", {}) or {}).items()
        }
        light = raw.pop("light_rules", {}) or {}
        if not isinstance(light, dict):
            raise SiteError(f"{path}: light_rules must be a mapping")
        site = Site(**raw, default=default, sizes=sizes, light_rules=light)
    except TypeError as exc:
        raise SiteError(f"site file {path}: {exc}") from exc
    numbers = {}
    for key in ("flops_per_gpu", "flops_per_cpu_rank", "time_margin"):
        # YAML 1.1 reads `1.0e14` (no exponent sign) as a string: accept it as a number.
        try:
            numbers[key] = float(getattr(site, key))
        except (TypeError, ValueError):
            numbers[key] = -1.0
        if numbers[key] <= 0:
            raise SiteError(f"site file {path}: {key} must be a positive number")
    return replace(site, **numbers)
