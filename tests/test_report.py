"""The per-patient report (``--report``) and the occlusion saliency (``--saliency``).

One real CLI run on the smoke model (session fixture, trained once) with ``--report --seg-gt
--saliency``; the files it writes are checked against its ``predictions.csv``: valid PNGs whose
embedded numbers match, a summary page sorted by risk with every case, percentiles from the
out-of-sample reference. The saliency's unoccluded risk is checked against ``predictions.csv``
(one fold, CLI) and against each fold's prediction (two folds, API). Reference distribution,
clinical marks and block layout are unit-tested without a model.
"""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import bin_of, run
from nnunet_multitask.prediction_run import predict_folder
from nnunet_multitask.predictor import predict_entry_point
from nnunet_multitask.report import (ReferenceDistribution, ReportError, check_report_inputs, clinical_values,
                                     reference_distribution, write_report)
from nnunet_multitask.saliency import occlusion_blocks, occlusion_saliency, case_image_files
import test_predictor
from test_predictor import CLI_COMMON, HORIZON, MODEL_DIR, _case_folder, _copy_model_folder, _predictor, _test_cases

# the smoke model's fixtures of tests/test_predictor.py (module scope: a private copy of the session's model)
model, api_env = test_predictor.model, test_predictor.api_env

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _SummaryPage(HTMLParser):
    """Rows (their data-* attributes), links and anchors of the summary page."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self.anchors, self.images = [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-case-id" in attrs:
            self.rows.append(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if "id" in attrs:
            self.anchors.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])


def _png_numbers(path: Path) -> dict:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 500
        return json.loads(im.text["Description"])


@pytest.fixture(scope="module")
def report_run(model, smoke_model, tmp_path_factory):
    """The CLI with --report --seg-gt --saliency on every test case; the model copy gets the
    smoke training's out-of-sample validation predictions (the percentile reference)."""
    src = Path(smoke_model["model_folder"]) / "fold_0" / "validation" / "head_predictions.csv"
    (model["folder"] / "fold_0" / "validation").mkdir(exist_ok=True)
    shutil.copy(src, model["folder"] / "fold_0" / "validation" / "head_predictions.csv")
    out = tmp_path_factory.mktemp("report") / "out"
    proc = run([bin_of("nnUNetv2_predict_multitask"), "-i", str(model["images_ts"]), "-o", str(out), *CLI_COMMON,
                "-npp", "0", "-nps", "0", "--report", "--seg-gt", str(Path(model["raw"]) / "labelsTs"),
                "--saliency", "--saliency-blocks", "3"], model["env"], timeout=900)
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    return dict(out=out, table=table, stdout=proc.stdout, reference=pd.read_csv(src))


# ---------------------------------------------------------------------------- the report of a CLI run
def test_report_files_are_valid_and_match_predictions(model, report_run):
    out, table = report_run["out"], report_run["table"]
    report = out / "report"
    assert f"open {report / 'index.html'}" in report_run["stdout"]
    for _, row in table.iterrows():
        png = report / f"{row['case_id']}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        n = _png_numbers(png)
        assert n["case_id"] == row["case_id"]
        assert n["risk_score"] == pytest.approx(row["risk_score"], rel=1e-12)
        assert n["p_recurrence_classification_head"] == pytest.approx(row[f"p_recurrence_{HORIZON}m"], rel=1e-12)
        assert n["p_recurrence_survival_head"] == pytest.approx(1 - row[f"surv_prob_{HORIZON}m"], rel=1e-12)
        assert {p["months"]: p["s"] for p in n["survival"]} == pytest.approx(
            {t: row[f"surv_prob_{t}m"] for t in (12, 24, 36, 60)}, rel=1e-12)
        assert n["tumour_found"] == bool(row["tumour_found"]) and n["n_folds"] == row["n_folds"] == 1
        assert n["set"] in ("internal test", "external test")
        # the clinical values used: every model column, imputed ones marked (none here)
        assert [c["column"] for c in n["clinical"]] == json.loads((out / "predictions.json").read_text())[
            "clinical_columns"]
        assert sum(c["imputed"] for c in n["clinical"]) == row["n_clinical_values_imputed"] == 0

    page = _SummaryPage()
    page.feed((report / "index.html").read_text())
    # every case once, sorted by risk (highest first), numbers as in predictions.csv
    by_risk = table.sort_values(["risk_score", "case_id"], ascending=[False, True])
    assert [r["data-case-id"] for r in page.rows] == list(by_risk["case_id"])
    for r in page.rows:
        row = table.set_index("case_id").loc[r["data-case-id"]]
        assert float(r["data-risk-score"]) == pytest.approx(row["risk_score"], rel=1e-12)
        assert float(r["data-p-recurrence-classification-head"]) == pytest.approx(row[f"p_recurrence_{HORIZON}m"],
                                                                                  rel=1e-12)
        assert r["data-tumour-found"] == str(bool(row["tumour_found"]))
        # links to the case's section and its PNG, both present
        assert f"#case-{r['data-case-id']}" in page.links and f"case-{r['data-case-id']}" in page.anchors
        assert f"{r['data-case-id']}.png" in page.links and f"{r['data-case-id']}.png" in page.images
    summary = pd.read_csv(report / "summary.csv", dtype={"case_id": str})
    assert list(summary["case_id"]) == list(by_risk["case_id"]) and list(summary["rank"]) == [1, 2, 3, 4][:len(table)]


def test_percentile_and_group_from_out_of_sample_reference(report_run):
    out, table = report_run["out"], report_run["table"]
    reference = report_run["reference"]["risk_score"].to_numpy()
    median = np.median(reference)
    for _, row in table.iterrows():
        n = _png_numbers(out / "report" / f"{row['case_id']}.png")
        r = row["risk_score"]
        expected = 100 * ((reference < r).sum() + 0.5 * (reference == r).sum()) / len(reference)
        assert n["risk_percentile"] == pytest.approx(expected)
        assert n["risk_group"] == ("high" if r > median else "low")
        assert n["reference_n"] == len(reference) and n["risk_threshold"] == pytest.approx(median)
    page = (out / "report" / "index.html").read_text()
    assert "out-of-sample" in page and "head_predictions.csv" in page and "overfit" in page


def test_percentile_unavailable_is_said_not_faked(api_env, report_run, tmp_path):
    """Without the validation predictions (benchmark variants skip the final validation)."""
    pred = tmp_path / "pred"
    shutil.copytree(report_run["out"], pred)
    no_reference = api_env["folder"].parent / "no_validation"
    _copy_model_folder(api_env["folder"], no_reference)
    ref = reference_distribution(str(no_reference), ["0"])
    assert not ref.available and "head_predictions.csv not found" in ref.reason_unavailable
    write_report(str(pred), str(api_env["images_ts"]), reference=ref, log=lambda *a: None)
    page = (pred / "report" / "index.html").read_text()
    assert "Percentile unavailable" in page and "head_predictions.csv not found" in page
    case = report_run["table"]["case_id"].iloc[0]
    n = _png_numbers(pred / "report" / f"{case}.png")
    assert n["risk_percentile"] is None and n["risk_group"] is None and "not found" in n[
        "percentile_unavailable_reason"]
    assert pd.read_csv(pred / "report" / "summary.csv")["risk_percentile"].isna().all()


def test_no_patient_identifiers_in_the_report(model, report_run):
    ids = pd.read_csv(Path(model["raw"]) / "patient_mapping.csv", dtype=str)
    patient_ids = list(ids["patient_id"])
    report = report_run["out"] / "report"
    texts = [(report / "index.html").read_text(), (report / "summary.csv").read_text()]
    texts += [json.dumps(_png_numbers(p)) for p in report.glob("*.png")]
    assert patient_ids and not [p for p in patient_ids for t in texts if p in t]


# ---------------------------------------------------------------------------- saliency
def test_saliency_uses_the_predictions_risk(model, report_run):
    """The CLI's maps: unoccluded risk = predictions.csv's risk (fold 0, the only fold), on the T2
    grid, cost as documented."""
    out, table = report_run["out"], report_run["table"]
    for _, row in table.iterrows():
        case = row["case_id"]
        record = json.loads((out / "saliency" / f"{case}.json").read_text())
        assert "unavailable" not in record
        assert record["baseline_risk"] == pytest.approx(row["risk_score"], rel=1e-6, abs=1e-9)
        assert record["baseline_risk_per_fold"] == pytest.approx([row["risk_score"]], rel=1e-6, abs=1e-9)
        assert 1 <= record["n_blocks"] <= 3 and record["n_forward_passes"] == (1 + record["n_blocks"]) * 1
        sal = sitk.ReadImage(str(out / "saliency" / f"{case}.nii.gz"))
        t2 = sitk.ReadImage(str(model["images_ts"] / f"{case}_0000.nii.gz"))
        assert sal.GetSize() == t2.GetSize() and np.allclose(sal.GetSpacing(), t2.GetSpacing())
        values = sitk.GetArrayFromImage(sal)
        assert np.isfinite(values).all() and np.abs(values).max() == pytest.approx(record["max_abs"], rel=1e-5)
        assert _png_numbers(out / "report" / f"{case}.png")["case_id"] == case


def test_saliency_per_fold_equals_the_prediction_of_that_fold(api_env, tmp_path):
    """Two folds (fold 1 = fold 0 with shifted head biases): the saliency's unoccluded risk of
    each fold is that fold's prediction, and their mean the ensemble's predictions.csv risk."""
    folder = test_predictor.two_fold_model(api_env["folder"], tmp_path / MODEL_DIR, {"survival_output.bias": -0.4})
    case = _test_cases(api_env["images_ts"])[0]
    inp = _case_folder(api_env["images_ts"], [case], tmp_path / "in")
    predictor = _predictor(folder, folds=(0, 1))
    table = predict_folder(predictor, str(inp), str(tmp_path / "out")).set_index("case_id")
    per_fold = [f["risk_score"] for f in predictor.head_results[case]["folds"]]
    sal = occlusion_saliency(predictor, case_image_files(str(inp), case, 4, ".nii.gz"), case, max_blocks=1)
    assert sal.baseline_risk_per_fold == pytest.approx(per_fold, rel=1e-6, abs=1e-9)
    assert sal.baseline_risk == pytest.approx(table.loc[case, "risk_score"], rel=1e-6, abs=1e-9)
    assert per_fold[0] != pytest.approx(per_fold[1])
    assert sal.n_blocks == 1 and sal.n_forward == 4  # (1 + 1 block) x 2 folds
    assert sal.values.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(inp / f"{case}_0000.nii.gz"))).shape


def test_occlusion_blocks_are_bounded_and_tile_the_region():
    region = [(2, 5), (10, 40), (7, 31)]
    for max_blocks in (1, 4, 12, 50):
        blocks = occlusion_blocks(region, max_blocks)
        assert 1 <= len(blocks) <= max_blocks
        cover = np.zeros((6, 41, 32), dtype=int)
        for b in blocks:
            cover[b] += 1
        inside = np.zeros_like(cover, dtype=bool)
        inside[tuple(slice(a, z) for a, z in region)] = True
        assert (cover[inside] == 1).all() and (cover[~inside] == 0).all()  # every voxel of the region once
    with pytest.raises(ValueError):
        occlusion_blocks(region, 0)


# ---------------------------------------------------------------------------- units
def test_reference_distribution_rules(tmp_path):
    model_folder = tmp_path / "model"
    for f, risks in ((0, [0.1, 0.4]), (1, [0.2, 0.3, 0.9])):
        (model_folder / f"fold_{f}" / "validation").mkdir(parents=True)
        pd.DataFrame({"case_id": [f"c{f}{i}" for i in range(len(risks))], "risk_score": risks}).to_csv(
            model_folder / f"fold_{f}" / "validation" / "head_predictions.csv", index=False)
    ref = reference_distribution(str(model_folder), [0, 1])
    assert ref.available and sorted(ref.risks) == [0.1, 0.2, 0.3, 0.4, 0.9]  # the folds used, pooled
    assert ref.threshold == 0.3 and ref.group(0.3) == "low" and ref.group(0.31) == "high"
    assert ref.percentile(0.3) == 50.0 and ref.percentile(0.05) == 0.0 and ref.percentile(1.0) == 100.0
    assert reference_distribution(str(model_folder), [0]).risks.tolist() == [0.1, 0.4]
    for folds, chk, reason in (([0, 2], "checkpoint_final.pth", "fold_2/validation/head_predictions.csv not found"),
                               (["all"], "checkpoint_final.pth", "fold 'all' trains on every development patient"),
                               ([0], "checkpoint_best.pth", "this prediction used checkpoint_best.pth")):
        ref = reference_distribution(str(model_folder), folds, chk)
        assert not ref.available and ref.percentile(0.3) is None and ref.group(0.3) is None
        assert reason in ref.reason_unavailable
    assert ReferenceDistribution(None, "x", "why").record()["reason_unavailable"] == "why"


def test_clinical_values_mark_imputed():
    table = pd.DataFrame({"age": ["61", None], "sex": ["M", "F"]}, index=pd.Index(["a", "b"], name="case_id"))
    assert clinical_values("a", ["age", "sex"], table) == [{"column": "age", "value": "61", "imputed": False},
                                                           {"column": "sex", "value": "M", "imputed": False}]
    assert [v["imputed"] for v in clinical_values("b", ["age", "sex"], table)] == [True, False]
    assert all(v["imputed"] and v["value"] is None for v in clinical_values("absent", ["age", "sex"], table))
    typed = pd.DataFrame({"cea": [2.5], "mrf": [1.0]}, index=pd.Index(["a"], name="case_id"))
    assert [v["value"] for v in clinical_values("a", ["cea", "mrf"], typed)] == ["2.5", "1"]


def test_report_options_are_checked(tmp_path, capsys):
    with pytest.raises(ReportError, match="--seg-gt: folder not found"):
        check_report_inputs(str(tmp_path), str(tmp_path / "absent"))
    with pytest.raises(ReportError, match="image folder not found"):
        check_report_inputs(str(tmp_path / "absent"), None)
    with pytest.raises(SystemExit) as e:
        predict_entry_point(["-i", "x", "-o", "y", "-d", "501", "-c", "3d_fullres", "--saliency"])
    assert e.value.code == 2 and "add --report" in capsys.readouterr().err
