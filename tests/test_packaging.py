import tomllib

import yaml

from smoke import ROOT


def test_environment_yml_pins_what_pyproject_requires():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    # environment.yml is the CPU environment: the requirements and the cpu extra's spconv
    assert [r for r in pip_section if r != "-e ."] == requirements[:1] + project["optional-dependencies"]["cpu"] \
        + requirements[1:]
    assert "-e ." in pip_section and "python=3.11" in environment["dependencies"]
    assert "torch==2.13.0" in requirements  # the CPU wheel, not the CUDA download


def test_dvc_runs_stage_depends_on_every_params_section_but_execution():
    """A section missing here would change results without `dvc repro` noticing; of
    execution only amp changes what runs compute (the rest: where they run)."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "params.schema.yaml").read_text())
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["runs"]
    assert set(stage["params"]) == set(schema["required"]) - {"execution"} | {"execution.amp"}
