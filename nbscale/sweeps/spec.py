"""``SweepSpec``: a job spec, a search space, an objective and a budget of trials.

Every backend receives the same ``SweepSpec``; a trial is the sweep's ``JobSpec`` with
the trial's values in ``NBSCALE_PARAMS`` (and, for a notebook, as its papermill
parameters), named ``<sweep>-t<N>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..specs import MAX_COST_USD, JobSpec
from .space import Objective, Space, parse_objective, parse_space

ALGORITHMS = ("tpe", "random", "grid", "bayesian")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
PRUNERS = ("median", "halving", "none")
MAX_TRIALS = 10_000
#: the environment variable a trial reads its values from (``nbscale.param``)
PARAMS_ENV = "NBSCALE_PARAMS"
#: set in every trial: its sweep's id; ``log_metric`` then also prints a metric line
SWEEP_ENV = "NBSCALE_SWEEP"
#: the space, for turning the strings a platform substitutes back into typed values
SPACE_ENV = "NBSCALE_SWEEP_SPACE"


@dataclass(frozen=True)
class SweepSpec:
    job: JobSpec
    space: Space
    objective: Objective
    trials: int = 16
    parallel: int = 1
    algorithm: str = "tpe"
    pruner: str = "median"
    max_failed: int = 3  # failed trials retried until this many failed; then the sweep stops
    max_cost: float | None = None  # USD for the whole sweep
    name: str = ""
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # backend-specific extras
    # the key a stored sweep was made with (``from_dict``): its code may have changed since
    fixed_key: str = field(default="", repr=False, compare=False)
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.job, JobSpec):
            raise SpecError("sweep.job", "must be a JobSpec")
        if isinstance(self.space, (list, str, dict)):
            object.__setattr__(self, "space", parse_space(self.space))
        if isinstance(self.objective, str):
            object.__setattr__(self, "objective", parse_objective(self.objective))
        if not self.name:
            object.__setattr__(self, "name", self.job.name[:40].rstrip("-"))
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError(
                "sweep.name",
                f"{self.name!r} is not a valid sweep name",
                "use lower-case letters, digits and '-', at most 40 characters (its trials are "
                "named <name>-t<N>), e.g. 'lr-search'",
            )
        for what, value, low, high in (
            ("trials", self.trials, 1, MAX_TRIALS),
            ("parallel", self.parallel, 1, MAX_TRIALS),
            ("max_failed", self.max_failed, 0, MAX_TRIALS),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SpecError(
                    f"sweep.{what}", f"must be a whole number {low}..{high}, got {value!r}"
                )
        if self.parallel > self.trials:
            object.__setattr__(self, "parallel", self.trials)
        if self.algorithm not in ALGORITHMS:
            raise SpecError(
                "sweep.algorithm",
                f"unknown {self.algorithm!r}",
                f"use one of {', '.join(ALGORITHMS)}",
            )
        if self.pruner not in PRUNERS:
            raise SpecError(
                "sweep.pruner", f"unknown {self.pruner!r}", f"use one of {', '.join(PRUNERS)}"
            )
        if self.algorithm == "grid":
            size = self.space.grid_size()  # refuses a continuous range
            if self.trials > size:
                object.__setattr__(self, "trials", size)
        if self.max_cost is not None and (
            isinstance(self.max_cost, bool)
            or not isinstance(self.max_cost, int | float)
            or not 0 < self.max_cost <= MAX_COST_USD
        ):
            raise SpecError(
                "sweep.max_cost", f"must be a positive number of USD, got {self.max_cost!r}"
            )
        clash = sorted(set(self.space.names) & set(self.job.env))
        if clash:
            raise SpecError("sweep", f"{clash[0]} is both a parameter and an --env variable")
        if PARAMS_ENV in self.job.env or SWEEP_ENV in self.job.env:
            raise SpecError("sweep", f"{PARAMS_ENV} and {SWEEP_ENV} are set by nbscale itself")
        object.__setattr__(self, "_key", self.fixed_key or self._compute_key())

    @property
    def key(self) -> str:
        """Same sweep, same key: what a re-run of the cell resumes (the code, the space, the
        objective, the algorithm and the job's shape; not the number of trials). Taken when
        the spec is made: the code as it was then."""
        return self._key

    def _compute_key(self) -> str:
        job = self.job.to_dict()
        job.pop("name", None)
        entry = job.get("entry") or {}
        target = Path(entry.get("target", ""))
        if target.is_file():  # the code itself, not where it lies (a cell's bundle path varies)
            entry = {**entry, "target": _file_digest(target)}
            job["entry"] = entry
        elif entry.get("kind") == "bundle":
            raise SpecError(
                "sweep.job", "the cell's bundle is not written yet", "write it before the sweep"
            )
        material = json.dumps(
            {
                "name": self.name,
                "job": job,
                "space": self.space.to_list(),
                "objective": str(self.objective),
                "algorithm": self.algorithm,
                "pruner": self.pruner,
                "seed": self.seed,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(material.encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        return f"{self.name}-{self.key}"

    def trial_name(self, number: int) -> str:
        return f"{self.name}-t{number}"

    def trial_spec(self, number: int, values: dict[str, Any]) -> JobSpec:
        """The job of trial ``number`` with these values."""
        env = {
            **self.job.env,
            PARAMS_ENV: json.dumps(values, sort_keys=True),
            SWEEP_ENV: self.id,
            SPACE_ENV: json.dumps(self.space.to_list()),
        }
        tags = {**self.job.tags, "nbscale-sweep": self.id, "nbscale-trial": str(number)}
        entry = self.job.entry
        if entry.kind == "notebook":
            entry = dataclasses.replace(entry, parameters={**entry.parameters, **values})
        return self.job.replace(name=self.trial_name(number), env=env, tags=tags, entry=entry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job.to_dict(),
            "space": self.space.to_list(),
            "objective": str(self.objective),
            "trials": self.trials,
            "parallel": self.parallel,
            "algorithm": self.algorithm,
            "pruner": self.pruner,
            "max_failed": self.max_failed,
            "max_cost": self.max_cost,
            "name": self.name,
            "seed": self.seed,
            "settings": dict(self.settings),
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        data = dict(data)
        key = data.pop("key", "")
        return cls(
            fixed_key=key,
            job=JobSpec.from_dict(data.pop("job")),
            space=Space.from_list(data.pop("space")),
            objective=parse_objective(data.pop("objective")),
            **data,
        )

    def replace(self, **changes: Any) -> SweepSpec:
        return dataclasses.replace(self, **changes)


def _file_digest(path: Path) -> str:
    import zipfile

    digest = hashlib.sha256()
    if zipfile.is_zipfile(path):  # a cell's bundle: its parts, not its zip timestamps
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                if name in ("manifest.json", "manifest.sig"):
                    continue
                digest.update(name.encode() + b"\0" + zf.read(name))
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
