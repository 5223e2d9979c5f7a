"""Load and validate params.yaml: the one home of the grid and every hyperparameter.

The JSON schema in workflow/schemas/ is the single definition of what a valid
file looks like; the Snakefile validates ``config`` against the same file.
``check_consistency`` adds the few cross-key rules a schema cannot express.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from occbench.data.splits import check_nesting

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path(
    os.environ.get("OCCBENCH_SCHEMA", PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml")
)


class ParamsError(ValueError):
    """params.yaml is not a valid occbench experiment description."""


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    try:
        return yaml.safe_load(SCHEMA_PATH.read_text())
    except FileNotFoundError as err:
        raise ParamsError(
            f"{SCHEMA_PATH}: schema not found; install occbench from its source tree "
            "(pip install -e .) or point OCCBENCH_SCHEMA at workflow/schemas/params.schema.yaml"
        ) from err


def _key_path(path: Any) -> str:
    parts = []
    for part in path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_params(params: Any, source: str = "params.yaml") -> dict[str, Any]:
    """Raise ParamsError naming every bad key of ``params``; return it unchanged."""
    validator = jsonschema.Draft202012Validator(load_schema())
    # A value matching none of a oneOf's forms: the form it comes closest to says what is wrong in it
    # (a teacher's unknown method), where the oneOf itself only says that it is not valid.
    errors = sorted((best_match([e]) if e.context else e for e in validator.iter_errors(params)),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: {_key_path(e.absolute_path)}: {e.message}" for e in errors]
        raise ParamsError("invalid parameters\n  " + "\n  ".join(lines))
    check_consistency(params, source)
    return params


def check_consistency(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Rules spanning several keys, which the schema cannot state."""
    problems = []
    grid = params["grid"]
    for index, transfer in enumerate(grid["transfers"]):
        for role in ("pretrain", "finetune"):
            if transfer[role] not in params["datasets"]:
                problems.append(
                    f"grid.transfers[{index}].{role}: dataset {transfer[role]!r} "
                    f"is not defined under datasets"
                )
    for index, backbone in enumerate(grid["backbones"]):
        if backbone not in params["backbones"]:
            problems.append(f"grid.backbones[{index}]: {backbone!r} is not defined under backbones")
    for name, dataset in params["datasets"].items():
        if dataset["kind"] == "synthetic":
            from occbench.data.synthetic import SensorProfile  # a profile's values live in code

            try:
                SensorProfile.from_dict(dataset["sensor"])
            except ValueError as err:
                problems.append(f"datasets.{name}.sensor: {err}")
    from occbench.workflow.grid import PROBE, SCRATCH, task_axes  # grid.py imports this module

    axes = {task: task_axes(grid, task) for task in grid["tasks"]}
    # every task's label splits are drawn from the same nested files: their fractions must nest together
    label_fractions = sorted({f for each in axes.values() for f in each["label_fractions"]})
    for key, fractions in (("pretrain_sampling", grid["pretrain_fractions"]),
                           ("label_sampling", label_fractions)):
        try:
            check_nesting(fractions, params["splits"][key])
        except ValueError as err:
            problems.append(f"splits.{key}: {err}")
    if SCRATCH not in grid["methods"]:
        problems.append(f"grid.methods: {grid['methods']} lacks {SCRATCH!r}; every table compares with it")
    elif grid["compute_matched_scratch"] and set(grid["methods"]) <= {SCRATCH}:
        problems.append("grid.compute_matched_scratch: grid.methods has no pre-training method to match the steps of")
    low, high = params["voxelization"]["point_cloud_range"][:3], params["voxelization"]["point_cloud_range"][3:]
    if any(lo >= hi for lo, hi in zip(low, high)):
        problems.append("voxelization.point_cloud_range: each minimum must be below its maximum")
    for task in grid["tasks"]:
        settings = params["finetune"][task]
        schedules = {f"finetune.{task}.epochs": settings["epochs"]}
        if PROBE in grid["finetune_modes"] and "epochs" in settings.get(PROBE, {}):
            schedules[f"finetune.{task}.{PROBE}.epochs"] = settings[PROBE]["epochs"]
        largest = max(axes[task]["label_fractions"])
        for key, schedule in schedules.items():
            if max(entry["up_to_label_fraction"] for entry in schedule) < largest:
                problems.append(f"{key}: no entry covers the largest label fraction {largest}")
    problems += _teacher_problems(params)
    if problems:
        raise ParamsError("invalid parameters\n  " + "\n  ".join(f"{source}: {p}" for p in problems))


def _teacher_problems(params: dict[str, Any]) -> list[str]:
    """A teacher must exist before its student runs: a method defined under pretrain.methods
    (scratch is not: it has no checkpoint), at one of the grid's pre-training fractions, with
    no cycle; or a pinned file."""
    methods, fractions = params["pretrain"]["methods"], params["grid"]["pretrain_fractions"]
    problems = []
    for name, settings in methods.items():
        spec, key = settings.get("teacher"), f"pretrain.methods.{name}.teacher"
        if spec is not None and "weights" in spec:
            if not Path(spec["weights"]).is_file():
                problems.append(f"{key}.weights: {spec['weights']}: no such file (a pinned teacher must be "
                                "there before the run: nothing is downloaded)")
            continue
        if spec is not None and "fraction" in spec and spec["fraction"] not in fractions:
            problems.append(f"{key}.fraction: {spec['fraction']} is not one of grid.pretrain_fractions {fractions}")
        chain = [name]
        while spec is not None and "method" in spec:
            teacher = spec["method"]
            if teacher not in methods:
                problems.append(f"{key}.method: {teacher!r} is not defined under pretrain.methods")
                break
            if teacher in chain:
                problems.append(f"{key}: teachers form a cycle: {' -> '.join([*chain, teacher])}")
                break
            chain.append(teacher)
            spec = methods[teacher].get("teacher")
    return problems


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay one params dict on another as Snakemake merges --configfile:
    mappings merge key by key, anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameters at the top level")
    return data


def from_settings(cls: type[T], settings: dict[str, Any], what: str) -> T:
    """Build the dataclass ``cls`` from a params.yaml mapping, naming any key it does not know."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"{what} settings: unknown key(s) {unknown}; known: {names}")
    return cls(**settings)


def load_params(*paths: str | os.PathLike) -> dict[str, Any]:
    """Read params.yaml, then each overlay file on top of it, and validate the result."""
    paths = tuple(Path(p) for p in paths) or (Path("params.yaml"),)
    params: dict[str, Any] = {}
    for path in paths:
        params = merge(params, _read_yaml(path))
    return validate_params(params, " + ".join(map(str, paths)))
