"""Split inference (``-num_parts N -part_id K``) and ``--merge``.

End to end on the smoke model (session fixture, trained once): the real CLI predicts the test
cases in two parts (one on nnU-Net's sequential path, one with worker processes) and merges
them; the merge equals the single run of ``tests/test_predictor.py`` (``batch_run``). The merge's
refusals are tested on fabricated part folders (no model needed) and through the in-process CLI
(exit status 2, ``nnUNetv2_predict_multitask: error: ...``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import bin_of, run
from nnunet_multitask.prediction_artifact import MultitaskPredictionError, case_list_sha256
from nnunet_multitask.prediction_parts import (PER_RUN_KEYS, PartMergeError, check_part_arguments, merge_parts,
                                               part_share, refuse_other_part_in_folder)
from nnunet_multitask.predictor import predict_entry_point
import test_predictor
from test_predictor import CLI_COMMON, _test_cases

# the smoke model's fixtures of tests/test_predictor.py (module scope: a private copy of the session's model;
# batch_run: the single CLI run over every test case the merge is compared with)
model, api_env, batch_run = test_predictor.model, test_predictor.api_env, test_predictor.batch_run

FLOAT_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------- fabricated parts
def _fake_part(folder: Path, part_id: int, num_parts: int, all_cases, sha: str = "a" * 64, **meta_changes) -> Path:
    """A part folder as a -num_parts run writes it: partial predictions.csv/json, segmentations."""
    folder.mkdir(parents=True)
    share = sorted(all_cases)[part_id::num_parts]
    rows = [{"case_id": c, "risk_score": 0.1 + i / 7, "p_recurrence_36m": 0.3 + i / 11, "risk_score_sd": "",
             "n_folds": 1, "tumour_found": True, "series_available": "T2;ADC"}
            for i, c in enumerate(sorted(all_cases)) if c in share]
    table = pd.DataFrame(rows)
    table.to_csv(folder / "predictions.csv", index=False)
    meta = {"model_folder": f"/machine{part_id}/model", "trainer": "MultiRecTrainer", "plans": "nnUNetPlans",
            "configuration": "3d_fullres", "folds": ["0"], "checkpoint": "checkpoint_final.pth",
            "checkpoint_sha256": {"0": sha}, "created": f"2026-01-0{part_id + 1}T00:00:00+00:00",
            "n_cases": len(share), "use_mirroring": True, "tile_step_size": 0.5, "columns": list(table.columns),
            "clinical_table": f"/machine{part_id}/clinical.csv",
            "part": {"part_id": part_id, "num_parts": num_parts, "cases": share, "all_cases": sorted(all_cases),
                     "all_cases_sha256": case_list_sha256(all_cases), "input_folder": "/data/imagesTs",
                     "clinical_table_sha256": "c" * 64}}
    meta["tables_sha256"] = {"predictions.csv": hashlib.sha256((folder / "predictions.csv").read_bytes()).hexdigest()}
    meta.update(meta_changes)
    (folder / "predictions.json").write_text(json.dumps(meta))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for c in share:
        (folder / f"{c}.nii.gz").write_bytes(c.encode())
    return folder


def _reseal(folder: Path) -> None:
    """Record the part's current predictions.csv digest, as if its prediction had written it."""
    meta = json.loads((folder / "predictions.json").read_text())
    meta["tables_sha256"] = {"predictions.csv": hashlib.sha256((folder / "predictions.csv").read_bytes()).hexdigest()}
    (folder / "predictions.json").write_text(json.dumps(meta))


CASES = [f"LARC_{i:04d}" for i in (3, 1, 8, 5, 10)]


def test_part_share_is_nnunet_slicing(tmp_path):
    """Our share of the cases is exactly the one nnU-Net's _manage_input_and_output_lists gives a part."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    folder = tmp_path / "in"
    folder.mkdir()
    for c in CASES:
        for ch in range(2):
            (folder / f"{c}_{ch:04d}.nii.gz").write_bytes(b"")
    predictor = nnUNetPredictor(device=__import__("torch").device("cpu"), allow_tqdm=False)
    predictor.dataset_json = {"file_ending": ".nii.gz"}
    for n in (1, 2, 3):
        shares = []
        for k in range(n):
            _, outs, _ = predictor._manage_input_and_output_lists(str(folder), str(tmp_path / "out"), part_id=k,
                                                                  num_parts=n)
            assert [Path(o).name for o in outs] == part_share(CASES, k, n)
            shares += part_share(CASES, k, n)
        assert sorted(shares) == sorted(CASES)  # every case once


def test_part_arguments_are_checked():
    with pytest.raises(MultitaskPredictionError, match=r"-part_id 2: must be between 0 and -num_parts - 1 = 1"):
        check_part_arguments(2, 2)
    with pytest.raises(MultitaskPredictionError, match="-num_parts 0"):
        check_part_arguments(0, 0)
    with pytest.raises(MultitaskPredictionError, match=r"-num_parts 6 is more than the 5 case\(s\)"):
        part_share(CASES, 0, 6)


def test_merge_of_fabricated_parts(tmp_path):
    p0 = _fake_part(tmp_path / "p0", 0, 2, CASES)
    p1 = _fake_part(tmp_path / "p1", 1, 2, CASES)
    out = tmp_path / "merged"
    table = merge_parts([str(p1), str(p0)], str(out))  # any order
    assert list(table["case_id"]) == sorted(CASES)
    merged = (out / "predictions.csv").read_text().splitlines()
    parts = [ln for p in (p0, p1) for ln in (p / "predictions.csv").read_text().splitlines()[1:]]
    # the parts' rows as written (text), sorted by case id, under the same header
    assert merged[0] == (p0 / "predictions.csv").read_text().splitlines()[0]
    assert merged[1:] == sorted(parts)
    meta = json.loads((out / "predictions.json").read_text())
    assert "part" not in meta and meta["n_cases"] == len(CASES)
    assert [m["part_id"] for m in meta["merged_from"]] == [0, 1]
    for c in CASES:  # segmentations copied
        assert (out / f"{c}.nii.gz").read_bytes() == c.encode()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["other_checkpoint", "other_settings", "other_clinical_table", "overlap",
                                  "missing_part", "same_part_twice", "other_split", "other_case_list",
                                  "complete_run", "missing_segmentation", "folder_twice", "output_is_a_part"])
def test_merge_refuses_mismatched_parts(tmp_path, case, capsys):
    p0 = _fake_part(tmp_path / "p0", 0, 2, CASES)
    parts = [p0]
    expected = None
    if case == "other_checkpoint":
        parts.append(_fake_part(tmp_path / "p1", 1, 2, CASES, sha="b" * 64))
        expected = r"come from different models or settings \(differing \['checkpoint_sha256'\]"
    elif case == "other_settings":
        parts.append(_fake_part(tmp_path / "p1", 1, 2, CASES, use_mirroring=False))
        expected = r"differing \['use_mirroring'\]"
    elif case == "other_clinical_table":
        p1 = _fake_part(tmp_path / "p1", 1, 2, CASES)
        meta = json.loads((p1 / "predictions.json").read_text())
        meta["part"]["clinical_table_sha256"] = "d" * 64
        (p1 / "predictions.json").write_text(json.dumps(meta))
        parts.append(p1)
        expected = r"differing \['clinical_table_sha256'\]"
    elif case == "overlap":
        p1 = _fake_part(tmp_path / "p1", 1, 2, CASES)
        extra = pd.read_csv(p0 / "predictions.csv", dtype=str, keep_default_na=False).iloc[:1]
        both = pd.concat([pd.read_csv(p1 / "predictions.csv", dtype=str, keep_default_na=False), extra])
        both.to_csv(p1 / "predictions.csv", index=False)
        _reseal(p1)  # an overlap made by the prediction itself, not an edit afterwards
        parts.append(p1)
        expected = rf"case\(s\) \['{sorted(CASES)[0]}'\] are in both .*p0 and .*p1: parts overlap"
    elif case == "missing_part":
        expected = r"part\(s\) \[1\] of 2 missing"
    elif case == "same_part_twice":
        parts.append(_fake_part(tmp_path / "p0_again", 0, 2, CASES))
        expected = r"part 0 of 2 given twice"
    elif case == "other_split":
        parts.append(_fake_part(tmp_path / "p1", 1, 3, CASES))
        expected = r"a part of 2 but .* a part of 3: parts of different splits"
    elif case == "other_case_list":
        parts.append(_fake_part(tmp_path / "p1", 1, 2, CASES[:-1]))
        expected = r"split different case lists"
    elif case == "complete_run":
        full = _fake_part(tmp_path / "full", 0, 1, CASES)
        meta = json.loads((full / "predictions.json").read_text())
        del meta["part"]
        (full / "predictions.json").write_text(json.dumps(meta))
        parts = [full]
        expected = r"has no 'part' record: .* is a complete run"
    elif case == "missing_segmentation":
        p1 = _fake_part(tmp_path / "p1", 1, 2, CASES)
        (p1 / f"{part_share(CASES, 1, 2)[0]}.nii.gz").unlink()
        parts.append(p1)
        expected = rf"lacks the segmentation {part_share(CASES, 1, 2)[0]}.nii.gz"
    elif case == "folder_twice":
        parts.append(p0)
        expected = r"given twice"
    elif case == "output_is_a_part":
        parts.append(_fake_part(tmp_path / "p1", 1, 2, CASES))
        out = parts[1]
    out = tmp_path / "merged" if case != "output_is_a_part" else out
    if case == "output_is_a_part":
        expected = r"the output folder .* is one of the part folders"
    before = {p: sorted(x.name for x in p.iterdir()) for p in parts}
    with pytest.raises(PartMergeError, match=expected):
        merge_parts([str(p) for p in parts], str(out))
    if case != "output_is_a_part":
        assert not out.exists()
    assert before == {p: sorted(x.name for x in p.iterdir()) for p in parts}  # parts untouched

    # the CLI says the same, with nnU-Net-style exit status 2 and no traceback
    with pytest.raises(SystemExit) as exit_info:
        predict_entry_point(["--merge", *map(str, parts), "-o", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nnUNetv2_predict_multitask: error: --merge:" in err and "Traceback" not in err


def test_cli_part_arguments_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as e:
        predict_entry_point(["-i", "x", "-o", "y", "-d", "501", "-c", "3d_fullres", "-num_parts", "2", "-part_id", "2"])
    assert e.value.code == 2 and "-part_id 2 -num_parts 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end (smoke model)
@pytest.fixture(scope="module")
def split_run(model, tmp_path_factory):
    """The test cases predicted by the real CLI in two parts, then merged by the CLI (with --report)."""
    root = tmp_path_factory.mktemp("split")
    parts = [root / "part0", root / "part1"]
    # part 0 on nnU-Net's sequential path, part 1 with worker processes: both must agree with one run
    for k, procs in ((0, ["-npp", "0", "-nps", "0"]), (1, ["-npp", "1", "-nps", "1"])):
        proc = run([bin_of("nnUNetv2_predict_multitask"), "-i", str(model["images_ts"]), "-o", str(parts[k]),
                    *CLI_COMMON, *procs, "-num_parts", "2", "-part_id", str(k)], model["env"], timeout=900)
        assert f"Wrote part {k} of 2" in proc.stdout
    merged = root / "merged"
    proc = run([bin_of("nnUNetv2_predict_multitask"), "--merge", str(parts[1]), str(parts[0]), "-o", str(merged),
                "--report", "-i", str(model["images_ts"])], model["env"], timeout=900)
    return dict(parts=parts, merged=merged, stdout=proc.stdout)


def test_each_part_predicts_its_share_and_records_it(model, split_run):
    cases = _test_cases(model["images_ts"])
    for k, folder in enumerate(split_run["parts"]):
        table = pd.read_csv(folder / "predictions.csv", dtype={"case_id": str})
        assert list(table["case_id"]) == cases[k::2]
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases[k::2]]
        part = json.loads((folder / "predictions.json").read_text())["part"]
        assert part["part_id"] == k and part["num_parts"] == 2
        assert part["cases"] == cases[k::2] and part["all_cases"] == cases
        assert part["all_cases_sha256"] == case_list_sha256(cases) and len(part["clinical_table_sha256"]) == 64
        # nnU-Net's record names the real input folder, not the temporary share folder
        args = json.loads((folder / "predict_from_raw_data_args.json").read_text())
        assert args["list_of_lists_or_source_folder"] == str(model["images_ts"])
    # a part refuses to write into another part's folder (each part writes its own table)
    with pytest.raises(MultitaskPredictionError, match=r"already holds part 0 of 2: give each part its own"):
        refuse_other_part_in_folder(str(split_run["parts"][0]), 1, 2)


def test_split_and_merged_equals_single_run(batch_run, split_run):
    merged, single = split_run["merged"], batch_run["out"]
    a = pd.read_csv(merged / "predictions.csv", dtype={"case_id": str})
    b = pd.read_csv(single / "predictions.csv", dtype={"case_id": str})
    assert list(a.columns) == list(b.columns) and list(a["case_id"]) == list(b["case_id"])
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c], b[c], rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE, equal_nan=True,
                                       err_msg=c)
        else:
            assert list(a[c]) == list(b[c]), c
    for case in a["case_id"]:  # the segmentations are copied into the merged folder
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(merged / f"{case}.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(single / f"{case}.nii.gz"))))
    ma = json.loads((merged / "predictions.json").read_text())
    mb = json.loads((single / "predictions.json").read_text())
    keep = lambda m: {k: v for k, v in m.items() if k not in PER_RUN_KEYS + ("merged_cases_sha256",)}  # noqa: E731
    assert keep(ma) == keep(mb)
    assert ma["n_cases"] == mb["n_cases"] == len(a) and "part" not in ma
    assert sorted(m["part_id"] for m in ma["merged_from"]) == [0, 1]
    # --report on the merge: every case in the summary page
    page = (merged / "report" / "index.html").read_text()
    assert all(f"data-case-id=\"{c}\"" in page for c in a["case_id"])
    assert "Merged 2 parts" in split_run["stdout"]


def test_merge_refuses_real_parts_of_different_models(split_run, tmp_path, capsys):
    """A real part whose recorded checkpoint differs (as when another machine held other weights)."""
    other = tmp_path / "part1_other_model"
    shutil.copytree(split_run["parts"][1], other)
    meta = json.loads((other / "predictions.json").read_text())
    meta["checkpoint_sha256"] = {k: "0" * 64 for k in meta["checkpoint_sha256"]}
    (other / "predictions.json").write_text(json.dumps(meta))
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as e:
        predict_entry_point(["--merge", str(split_run["parts"][0]), str(other), "-o", str(out)])
    assert e.value.code == 2
    assert "different models or settings (differing ['checkpoint_sha256']" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(PartMergeError, match=r"part\(s\) \[1\] of 2 missing"):
        merge_parts([str(split_run["parts"][0])], str(out))
