import csv
from itertools import product

import pandas as pd
import pytest

from occbench.report.aggregate import read_summary, summarise
from occbench.report.tables import format_cell, latex_escape, write_tables

MAIN_METRICS = {"segmentation": "miou"}
# (method, label_fraction) -> mIoU per seed 0, 1, ...; "occ" has one seed and no 100 % run.
# At 10 %, also - scratch per seed = 0.04, 0.01, 0.07: mean 4.0, s = 3 points, t_{0.975,2} * 3 / sqrt(3) = 7.5,
# while the cell's own spread (s = 7 points) gives 17.4; at 100 %: 0.10, 0.08 -> 9.0 +- 12.706 * 1 = 12.7.
MIOU = {
    ("scratch", 0.1): [0.30, 0.35, 0.40],
    ("scratch", 1.0): [0.50, 0.54],
    ("occ", 0.1): [0.28],
    ("also", 0.1): [0.34, 0.36, 0.47],
    ("also", 1.0): [0.60, 0.62],
}


# method -> (untrained modules, pre-trained fraction) of its checkpoint; fully trained by default.
FULLY_TRAINED = ("", 1.0)


def make_summary(miou=MIOU, trained=None, label_split_seeds=(0,), mode="full"):
    """Runs of every seed on each of ``label_split_seeds`` (values repeated across splits), in one mode."""
    rows = []
    for (method, label_fraction), values in miou.items():
        pretrained = method not in ("scratch", "scratch_matched")
        untrained, fraction = (trained or {}).get(method, FULLY_TRAINED) if pretrained else ("", None)
        for (seed, value), split_seed in product(enumerate(values), label_split_seeds):
            rows.append(
                {
                    "task": "segmentation",
                    "backbone": "small",
                    "method": method,
                    "pretrain_dataset": None if method == "scratch" else "synthetic",
                    "pretrain_fraction": None if method == "scratch" else 1.0,
                    "finetune_dataset": "synthetic",
                    "label_fraction": label_fraction,
                    "seed": seed,
                    "label_split_seed": split_seed,
                    "mode": mode,
                    "pretrained_fraction": fraction,
                    "untrained_modules": untrained,
                    "metric": "miou",
                    "value": value,
                }
            )
    return summarise(pd.DataFrame(rows))


@pytest.fixture
def tables(tmp_path):
    paths = write_tables(make_summary(), MAIN_METRICS, tmp_path, method_order=["also", "occ"])
    return {path.suffix: path for path in paths}


def test_file_names(tables, tmp_path):
    assert sorted(tables.values()) == [
        tmp_path / f"segmentation_synthetic_small.{suffix}" for suffix in ("csv", "md", "tex")
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_markdown_cells_and_row_order(tables):
    lines = tables[".md"].read_text().splitlines()
    caption = lines[0]
    assert caption == (
        "mIoU (%) for segmentation fine-tuned on synthetic, backbone small: mean ± half-width of the 95 % "
        "t-interval over 1–3 training seeds, all on one label split per label fraction; (paired difference to "
        "scratch) in percentage points: mean ± half-width of the 95 % t-interval, over the same runs, of each run "
        "minus the scratch run of its training seed and label split."
    )
    assert lines[2:] == [
        "| Method | 10 % | 100 % |",
        "|:---|---:|---:|",
        "| scratch | 35.0 ± 12.4 | 52.0 ± 25.4 |",
        "| also (synthetic, 100 %) | 39.0 ± 17.4 (+4.0 ± 7.5) | 61.0 ± 12.7 (+9.0 ± 12.7) |",
        "| occ (synthetic, 100 %) | 28.0 (-2.0) | – |",
    ]


def test_latex_is_booktabs_and_escaped(tables):
    text = tables[".tex"].read_text()
    assert r"\begin{tabular}{lrr}" in text
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert text.count(rule) == 1
    assert r"    Method & 10 \% & 100 \% \\" in text
    assert (r"    also (synthetic, 100 \%) & 39.0 $\pm$ 17.4 (+4.0 $\pm$ 7.5) & 61.0 $\pm$ 12.7 (+9.0 $\pm$ 12.7) \\"
            in text)
    assert r"    occ (synthetic, 100 \%) & 28.0 (-2.0) & -- \\" in text
    assert r"(paired difference to scratch)" in text
    assert r"\caption{mIoU (\%) for segmentation" in text
    assert r"\label{tab:segmentation_synthetic_small}" in text
    assert "±" not in text and " % " not in text


def test_csv_holds_raw_numbers(tables):
    with tables[".csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], float(row["label_fraction"])) for row in rows] == [
        ("scratch", 0.1),
        ("scratch", 1.0),
        ("also", 0.1),
        ("also", 1.0),
        ("occ", 0.1),
    ]
    also_full = rows[3]
    assert float(also_full["mean"]) == pytest.approx(0.61)
    assert float(also_full["ci95"]) == pytest.approx(12.706205 * 0.01, rel=1e-6)
    assert float(also_full["delta_scratch"]) == pytest.approx(0.09)
    assert (int(also_full["n_runs"]), int(also_full["n_seeds"]), int(also_full["n_label_splits"])) == (2, 2, 1)
    assert also_full["pretrain_fraction"] == "1.0"
    also_tenth = rows[2]
    assert (also_tenth["paired_n"], also_tenth["unpaired_runs"]) == ("3", "")
    assert float(also_tenth["paired_diff_mean"]) == pytest.approx(0.04)
    assert float(also_tenth["paired_diff_ci95"]) == pytest.approx(4.302653 * 0.03 / 3**0.5, rel=1e-6)
    assert rows[0]["pretrain_dataset"] == "" and rows[4]["ci95"] == "" and rows[4]["paired_diff_ci95"] == ""


BEV_NOTE = "BEV neck (to_bev, bev_neck) not pre-trained: 41.0 % of the backbone starts from random init"


def write_marked(tmp_path, trained, summary_via_csv=False):
    summary = make_summary(trained=trained)
    if summary_via_csv:  # as ``occbench report`` reads it back: "" becomes NaN
        summary.to_csv(tmp_path / "summary.csv", index=False)
        summary = read_summary(tmp_path / "summary.csv")
    paths = write_tables(summary, MAIN_METRICS, tmp_path, method_order=["also", "occ"])
    return {path.suffix: path.read_text() for path in paths}


def test_no_marker_when_every_module_was_trained(tables):
    for path in tables.values():
        assert "†" not in path.read_text() and "textdagger" not in path.read_text()
    assert "Marked" not in tables[".md"].read_text()


@pytest.mark.parametrize("summary_via_csv", [False, True])
def test_source_with_untrained_bev_neck_is_marked(tmp_path, summary_via_csv):
    """ALSO never trained the BEV neck (59 % pre-trained); occ trained everything."""
    text = write_marked(tmp_path, {"also": ("to_bev,bev_neck", 0.59)}, summary_via_csv)
    lines = text[".md"].splitlines()
    assert lines[0].endswith(
        "Marked sources left backbone modules untrained in pre-training (no gradient reached them). "
        f"† {BEV_NOTE}."
    )
    assert lines[5].startswith("| also (synthetic, 100 %) † | 39.0 ± 17.4 (+4.0 ± 7.5) |")
    assert lines[4].startswith("| scratch |") and lines[6].startswith("| occ (synthetic, 100 %) |")
    assert text[".md"].count("†") == 2  # the row and its legend entry
    assert r"also (synthetic, 100 \%) \textdagger{} & 39.0" in text[".tex"]
    assert r"\textdagger{} BEV neck (to\_bev, bev\_neck) not pre-trained: 41.0 \% of the backbone" in text[".tex"]
    rows = list(csv.DictReader(text[".csv"].splitlines()))
    assert [row["row"] for row in rows if row["method"] == "also"] == ["also (synthetic, 100 %) †"] * 2
    assert {(row["untrained_modules"], row["pretrained_fraction"]) for row in rows if row["method"] == "also"} == {
        ("to_bev,bev_neck", "0.59")
    }
    assert all("†" not in row["row"] for row in rows if row["method"] != "also")


def test_distinct_untrained_parts_get_distinct_markers(tmp_path):
    """A source that never trained the decoder: †† with its own share, unnamed modules listed as they are."""
    text = write_marked(tmp_path, {"also": ("to_bev,bev_neck", 0.59), "occ": ("up2,fuse1,up1,fuse0,stem", 0.75)})
    lines = text[".md"].splitlines()
    assert lines[0].endswith(
        f"† {BEV_NOTE}. †† decoder (up2, fuse1, up1, fuse0) and stem not pre-trained: "
        "25.0 % of the backbone starts from random init."
    )
    assert lines[5].startswith("| also (synthetic, 100 %) † |")
    assert lines[6].startswith("| occ (synthetic, 100 %) †† |")


@pytest.mark.parametrize("summary_via_csv", [False, True])
def test_seed_without_scratch_partner_is_marked(tmp_path, summary_via_csv):
    """Scratch at 10 % lacks seed 2: also's bracket pairs seeds 0 and 1 (0.04, 0.01) and says so."""
    summary = make_summary({**MIOU, ("scratch", 0.1): [0.30, 0.35]})
    if summary_via_csv:
        summary.to_csv(tmp_path / "summary.csv", index=False)
        summary = read_summary(tmp_path / "summary.csv")
    paths = write_tables(summary, MAIN_METRICS, tmp_path, method_order=["also", "occ"])
    text = {path.suffix: path.read_text() for path in paths}
    lines = text[".md"].splitlines()
    assert lines[0].endswith(
        "of its training seed and label split. ‡ Bracket over fewer runs than the cell: "
        "also (synthetic, 100 %) at 10 %: 2 of 3 runs paired, no scratch run of seed/label split 2/0."
    )
    # 12.706205 * 0.015 = 19.1 points; the 100 % cell and occ are fully paired and unmarked.
    assert lines[5] == "| also (synthetic, 100 %) | 39.0 ± 17.4 (+2.5 ± 19.1) ‡ | 61.0 ± 12.7 (+9.0 ± 12.7) |"
    assert lines[6] == "| occ (synthetic, 100 %) | 28.0 (-2.0) | – |"
    assert text[".md"].count("‡") == 2
    assert r"(+2.5 $\pm$ 19.1) \textdaggerdbl{} &" in text[".tex"]
    rows = list(csv.DictReader(text[".csv"].splitlines()))
    assert [(row["paired_n"], row["unpaired_runs"]) for row in rows if row["method"] == "also"] == [
        ("2", "2/0"), ("2", "")
    ]


def test_cell_format_edge_cases():
    record = {"method": "also", "mean": 0.4123, "ci95": 0.0131, "n_runs": 3, "paired_n": 3,
              "paired_diff_mean": -0.0004, "paired_diff_ci95": 0.0052}
    assert format_cell(record) == "41.2 ± 1.3 (+0.0 ± 0.5)"  # a rounded -0.0 reads as +0.0
    assert format_cell({**record, "paired_n": 1, "paired_diff_ci95": float("nan")}) == "41.2 ± 1.3 (+0.0) ‡"
    no_scratch = {**record, "paired_n": 0, "paired_diff_mean": float("nan"), "paired_diff_ci95": float("nan")}
    assert format_cell(no_scratch) == "41.2 ± 1.3 ‡"
    assert format_cell({**record, "method": "scratch"}) == "41.2 ± 1.3"
    assert latex_escape("a_b & 5 % #1 {x} ‡") == r"a\_b \& 5 \% \#1 \{x\} \textdaggerdbl{}"


def caption(tmp_path, summary):
    paths = write_tables(summary, MAIN_METRICS, tmp_path)
    return next(path for path in paths if path.suffix == ".md").read_text().splitlines()[0]


SCRATCH_AND_ALSO = {key: values for key, values in MIOU.items() if key[0] in ("scratch", "also")}


def test_caption_says_what_the_interval_covers_as_the_grid_has_it(tmp_path):
    both = caption(tmp_path, make_summary(SCRATCH_AND_ALSO, label_split_seeds=(0, 1)))
    assert "t-interval over 2–3 training seeds × 2 label splits, one run each; (paired" in both
    splits_only = {key: values[:1] for key, values in SCRATCH_AND_ALSO.items()}
    assert "t-interval over 3 label splits, all with one training seed; (paired" in \
        caption(tmp_path, make_summary(splits_only, label_split_seeds=(0, 4, 5)))
    assert "t-interval over 1 training seed, all on one label split per label fraction; (paired" in \
        caption(tmp_path, make_summary(splits_only))


def test_caption_names_the_fractions_whose_interval_spans_other_axes(tmp_path):
    """As the grid runs it: two label splits below 100 % labels, one at 100 % (every split is all frames)."""
    below = make_summary({key: v for key, v in SCRATCH_AND_ALSO.items() if key[1] < 1}, label_split_seeds=(0, 1))
    full = make_summary({key: v for key, v in SCRATCH_AND_ALSO.items() if key[1] == 1})
    text = caption(tmp_path, pd.concat([below, full]))
    assert ("t-interval over 3 training seeds × 2 label splits, one run each (at 10 % labels) and "
            "2 training seeds, all on one label split per label fraction (at 100 % labels); (paired") in text


def test_compute_matched_scratch_is_its_own_row_with_a_paired_bracket(tmp_path):
    """At 10 %: 0.32, 0.36, 0.43 -> 37.0 ± 4.30 * sqrt(0.0031 / 3) = 13.8; minus scratch per seed 0.02, 0.01,
    0.03 -> +2.0 ± 4.30 * 1 / sqrt(3) = 2.5."""
    miou = {**SCRATCH_AND_ALSO, ("scratch_matched", 0.1): [0.32, 0.36, 0.43]}
    paths = write_tables(make_summary(miou), MAIN_METRICS, tmp_path, method_order=["scratch", "also"])
    lines = next(path for path in paths if path.suffix == ".md").read_text().splitlines()
    assert lines[4].startswith("| scratch |")
    assert lines[5] == "| scratch_matched (synthetic, 100 %) | 37.0 ± 13.8 (+2.0 ± 2.5) | – |"
    assert lines[6].startswith("| also (synthetic, 100 %) |")
    assert lines[0].endswith("scratch_matched (D, P %): scratch trained for as many optimizer steps as "
                             "pre-training on P % of D plus fine-tuning, rounded up to whole epochs.")


def test_one_table_per_dataset_and_backbone(tmp_path):
    summary = make_summary()
    other = summary.assign(backbone="base")
    paths = write_tables(pd.concat([summary, other]), MAIN_METRICS, tmp_path)
    assert sorted(path.name for path in paths if path.suffix == ".md") == [
        "segmentation_synthetic_base.md",
        "segmentation_synthetic_small.md",
    ]


def test_a_probe_gets_tables_of_its_own_and_full_keeps_its_names(tmp_path):
    """The probe's runs are the full runs minus 0.2: its scratch row at 10 % reads 15.0, not 35.0."""
    lower = {key: [value - 0.2 for value in values] for key, values in MIOU.items()}
    paths = write_tables(pd.concat([make_summary(), make_summary(lower, mode="probe")]), MAIN_METRICS, tmp_path,
                         method_order=["also", "occ"])
    assert sorted(path.name for path in paths if path.suffix == ".md") == [
        "segmentation_synthetic_small.md", "segmentation_synthetic_small_probe.md"]
    full = (tmp_path / "segmentation_synthetic_small.md").read_text().splitlines()
    probe = (tmp_path / "segmentation_synthetic_small_probe.md").read_text().splitlines()
    assert full[0].startswith("mIoU (%) for segmentation fine-tuned on synthetic")
    assert probe[0].startswith("mIoU (%) for segmentation probed (frozen backbone, head trained) on synthetic")
    assert full[4].startswith("| scratch | 35.0 ± ") and probe[4].startswith("| scratch | 15.0 ± ")
    # the bracket pairs within the mode: at 10 % also - scratch is +4.0 in both
    assert "(+4.0 ± 7.5)" in full[5] and "(+4.0 ± 7.5)" in probe[5]


def test_more_metrics_get_their_own_table_beside_the_main_one(tmp_path):
    """Detection's mAP (the main metric) and NDS (a further one) each make a table; segmentation only its mIoU.
    The NDS runs are the mIoU runs halved: scratch at 10 % 17.5, at 100 % 26.0."""
    halved = {key: [value / 2 for value in values] for key, values in MIOU.items()}
    detection = pd.concat([make_summary().assign(task="detection", metric="mAP"),
                           make_summary(halved).assign(task="detection", metric="NDS")])
    paths = write_tables(pd.concat([make_summary(), detection]), {**MAIN_METRICS, "detection": "mAP"}, tmp_path,
                         method_order=["also", "occ"], more_metrics={"detection": ("NDS",)})
    assert sorted(path.name for path in paths if path.suffix == ".md") == [
        "detection_synthetic_small.md", "detection_synthetic_small_nds.md", "segmentation_synthetic_small.md"]
    main = (tmp_path / "detection_synthetic_small.md").read_text().splitlines()
    nds = (tmp_path / "detection_synthetic_small_nds.md").read_text().splitlines()
    assert main[0].startswith("mAP (%) for detection") and nds[0].startswith("NDS (%) for detection")
    assert main[4].startswith("| scratch | 35.0 ± 12.4 | 52.0 ± 25.4 |")
    assert nds[4].startswith("| scratch | 17.5 ± 6.2 | 26.0 ± 12.7 |")
