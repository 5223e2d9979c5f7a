import copy

import pytest
import yaml

from occbench.config import ParamsError, load_params, merge, validate_params
from smoke import ROOT, SMOKE_FILES, smoke_params


@pytest.fixture
def params():
    return copy.deepcopy(smoke_params())


def test_shipped_params_are_valid():
    load_params(ROOT / "params.yaml")
    load_params(*SMOKE_FILES)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda p: p["grid"].update(metods=["also"]), "grid: Additional properties are not allowed ('metods'"),
        (lambda p: p["grid"].update(methods=["also", "byol"]), "grid.methods[1]: 'byol' is not one of"),
        (lambda p: p["grid"].update(label_fractions=[0.1, 1.5]), "grid.label_fractions[1]: 1.5 is greater than"),
        (lambda p: p["grid"].update(seeds=[]), "grid.seeds: [] should be non-empty"),
        (lambda p: p["grid"].update(seeds=[0, 0]), "grid.seeds: [0, 0] has non-unique elements"),
        (lambda p: p["grid"].update(label_split_seeds=[1, 1]), "grid.label_split_seeds: [1, 1] has non-unique"),
        (lambda p: p["grid"].pop("label_split_seeds"), "grid: 'label_split_seeds' is a required property"),
        (lambda p: p["grid"].update(compute_matched_scratch="yes"), "grid.compute_matched_scratch: 'yes' is not of"),
        (lambda p: p["grid"].update(compute_matched_scratch=True, methods=["scratch"]),
         "grid.compute_matched_scratch: grid.methods has no pre-training method to match"),
        (lambda p: p["datasets"]["synthetic"]["sensor"].update(beams="32"), "datasets.synthetic.sensor.beams: '32' is not of type"),
        (lambda p: p["pretrain"]["methods"]["also"].pop("radius"), "pretrain.methods.also: 'radius' is a required property"),
        (lambda p: p["grid"]["transfers"].append({"pretrain": "lyft", "finetune": "synthetic"}),
         "grid.transfers[1].pretrain: dataset 'lyft' is not defined under datasets"),
        (lambda p: p["grid"].update(backbones=["huge"]), "grid.backbones[0]: 'huge' is not defined under backbones"),
        (lambda p: (p["grid"].update(label_fractions=[0.3, 1.0]), p["splits"].update(label_sampling="scenes")),
         "splits.label_sampling: fraction 0.3 is not 1/k for a whole k"),
        (lambda p: p["grid"].update(pretrain_fractions=[0.2, 0.5, 1.0]),
         "splits.pretrain_sampling: interval sampling with strides 2 and 5"),
        (lambda p: p["datasets"]["synthetic"]["sensor"].update(fov_up_deg=-40.0), "datasets.synthetic.sensor: sensor 'nuscenes32': needs beams >= 1, fov_down_deg <= fov_up_deg"),
        (lambda p: p["finetune"]["segmentation"].update(epochs=[{"up_to_label_fraction": 0.1, "epochs": 3}]),
         "finetune.segmentation.epochs: no entry covers the largest label fraction 1.0"),
        (lambda p: (p["grid"].update(tasks=["segmentation", "occupancy"]),
                    p["finetune"]["occupancy"].update(epochs=[{"up_to_label_fraction": 0.5, "epochs": 3}])),
         "finetune.occupancy.epochs: no entry covers the largest label fraction 1.0"),
        (lambda p: p["finetune"]["occupancy"].update(protocol="occ4d"),
         "finetune.occupancy.protocol: 'occ4d' is not one of"),
        (lambda p: p["finetune"]["detection"]["class_ranges"].update(tram=50.0),
         "finetune.detection.class_ranges: 'tram' is not one of"),
        (lambda p: p["finetune"]["detection"].update(class_groups=[["car", "animal"]]),
         "finetune.detection.class_groups[0][1]: 'animal' is not one of"),
    ],
)
def test_bad_grid_is_rejected_naming_the_key(params, edit, named):
    edit(params)
    with pytest.raises(ParamsError) as error:
        validate_params(params, "my.yaml")
    assert f"my.yaml: {named}" in str(error.value)


def test_overlay_merges_mappings_and_replaces_lists():
    base = {"grid": {"seeds": [0, 1, 2], "tasks": ["segmentation"]}, "pretrain": {"lr": 1.0, "epochs": 3}}
    overlay = {"grid": {"seeds": [7]}, "pretrain": {"epochs": 1}}
    assert merge(base, overlay) == {"grid": {"seeds": [7], "tasks": ["segmentation"]},
                                    "pretrain": {"lr": 1.0, "epochs": 1}}
    assert base["grid"]["seeds"] == [0, 1, 2]  # inputs untouched


def test_unreadable_params_file_is_named(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ParamsError, match=f"{bad}: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="missing.yaml: file not found"):
        load_params(tmp_path / "missing.yaml")


def test_snakemake_validates_with_the_same_schema(params):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(ROOT / "workflow" / "schemas" / "params.schema.yaml")
    validate(copy.deepcopy(params), schema)
    params["grid"]["methods"] = ["nope"]
    with pytest.raises(WorkflowError, match="nope"):
        validate(params, schema)
    assert yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())["additionalProperties"] is False


def test_schema_enums_name_exactly_the_registries():
    """Each name lives once, in its registry; the schema's enums must list exactly those names."""
    from occbench.config import load_schema
    from occbench.data.converters import CONVERTERS
    from occbench.data.taxonomy import CLASSES
    from occbench.metrics.occupancy import PROTOCOLS
    from occbench.pretrain import METHODS
    from occbench.pretrain.occfeat import DISTILLATIONS
    from occbench.tasks import TASKS
    from occbench.tasks.detection import DETECTION_CLASSES
    from occbench.training.optim import OPTIMIZERS, SCHEDULES
    from occbench.workflow.grid import FINETUNE_MODES, PROBE_OVERRIDES, SCRATCH

    schema = load_schema()
    defs, properties = schema["$defs"], schema["properties"]
    grid = properties["grid"]["properties"]
    assert set(grid["methods"]["items"]["enum"]) == {SCRATCH, *METHODS}
    assert set(grid["tasks"]["items"]["enum"]) == set(TASKS)
    assert tuple(grid["finetune_modes"]["items"]["enum"]) == FINETUNE_MODES
    assert tuple(defs["probe_settings"]["properties"]) == PROBE_OVERRIDES
    assert all(properties["finetune"]["properties"][task]["properties"]["probe"] == {"$ref": "#/$defs/probe_settings"}
               for task in TASKS)
    assert set(properties["datasets"]["additionalProperties"]["properties"]["kind"]["enum"]) == set(CONVERTERS)
    assert set(defs["optimizer"]["properties"]["name"]["enum"]) == set(OPTIMIZERS)
    assert set(defs["schedule"]["properties"]["name"]["enum"]) == set(SCHEDULES)
    assert set(properties["pretrain"]["properties"]["methods"]["properties"]) == set(METHODS)
    assert set(defs["teacher"]["oneOf"][0]["properties"]["method"]["enum"]) == set(METHODS)
    occfeat = properties["pretrain"]["properties"]["methods"]["properties"]["occfeat"]["properties"]
    assert tuple(occfeat["distillation"]["enum"]) == DISTILLATIONS
    assert defs["foreground_classes"]["items"]["enum"] == list(CLASSES)
    assert defs["detection_class"]["enum"] == list(DETECTION_CLASSES)
    assert set(properties["finetune"]["properties"]["occupancy"]["properties"]["protocol"]["enum"]) == set(PROTOCOLS)
    assert set(properties["finetune"]["required"]) - {"min_loaded_fraction"} == set(TASKS)
