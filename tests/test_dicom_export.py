"""DICOM export: the predicted tumour as DICOM-SEG and the risk values as a Comprehensive SR, re-read and
checked against the NIfTI mask and the values (tiny synthetic patient, T2 32 x 32 x 6)."""
from __future__ import annotations

import random

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dataset_conversion import synthetic_larc as sl
from dataset_conversion.dicom_export import (RESEARCH_USE_STATEMENT, DicomExportError, write_dicom_seg,
                                             write_risk_report)
from dataset_conversion.synthetic_dicom import write_patient_dicom

SHAPE = (32, 32, 6)


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    sl.generate_cohort(root / "cohort", 1, seed=0, shape=SHAPE)
    written = write_patient_dicom(root / "cohort", "P0001", root / "dicom", scanner_adc="none")
    mask = sitk.ReadImage(str(root / "cohort" / "images" / "P0001" / "mask.nii.gz"))
    return {"mask": mask, "t2_files": written["t2_files"], "ids": written["identifiers"]}


def shuffled(files, seed=1):
    files = list(files)
    random.Random(seed).shuffle(files)
    return files


def frames_by_position(seg: pydicom.Dataset) -> dict:
    """ImagePositionPatient (rounded) -> frame pixels of segment 1."""
    pixels = seg.pixel_array
    pixels = pixels.reshape((-1, *pixels.shape[-2:]))
    out = {}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        identification = group if "SegmentIdentificationSequence" in group else shared   # one segment: shared
        assert identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        position = tuple(np.round(np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float), 3))
        out[position] = frame
    return out


def check_seg_against_mask(path, mask: sitk.Image, t2_files, ids) -> None:
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Tumour"
    assert seg.ContentDescription == "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS"
    assert "research use only" in seg.SeriesDescription
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.AnatomicRegionSequence[0].CodeValue == "34402009"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ids["T2SeriesInstanceUID"]
    assert seg.PatientID == ids["PatientID"] and seg.StudyInstanceUID == ids["StudyInstanceUID"]
    assert seg.FrameOfReferenceUID == ids["FrameOfReferenceUID"]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, [1, 0, 0, 0, 1, 0])
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, mask.GetSpacing()[1::-1], atol=1e-5)

    # every frame sits at a T2 slice position; voxel-wise equal to the mask plane at that position
    t2_positions = {}
    for f in t2_files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        t2_positions[tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3))] = ds.SOPInstanceUID
    frames = frames_by_position(seg)
    mask_array = sitk.GetArrayFromImage(mask)
    assert frames and set(frames) <= set(t2_positions)
    for position in t2_positions:
        k = mask.TransformPhysicalPointToIndex(position)[2]
        assert np.allclose(mask.TransformIndexToPhysicalPoint((0, 0, k)), position, atol=1e-3)
        expected = mask_array[k]
        got = frames.get(position, np.zeros_like(expected))      # empty planes are left out
        assert np.array_equal(got.astype(np.uint8), expected), f"slice {k}"
    assert sum(int(f.sum()) for f in frames.values()) == int(mask_array.sum())
    # the frames reference their own T2 slice
    for group in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(np.round(np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float), 3))
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source == t2_positions[position]
    # highdicom reads it back too
    again = hd.seg.segread(path)
    assert again.number_of_segments == 1


def test_seg_round_trip_by_position(patient, tmp_path):
    path = write_dicom_seg(patient["mask"], shuffled(patient["t2_files"]), tmp_path / "seg" / "tumour.dcm")
    check_seg_against_mask(path, patient["mask"], patient["t2_files"], patient["ids"])
    # the file order does not matter
    other = write_dicom_seg(patient["mask"], shuffled(patient["t2_files"], seed=7), tmp_path / "again.dcm")
    assert np.array_equal(pydicom.dcmread(other).pixel_array, pydicom.dcmread(path).pixel_array)


def test_seg_of_a_mask_on_another_grid_is_resampled_by_position(patient, tmp_path):
    """A mask padded by 3 slices below (same physical space, another origin) lands on the same T2 slices."""
    mask = patient["mask"]
    padded = sitk.ConstantPad(mask, (2, 0, 0), (0, 1, 3), 0)
    assert padded.GetOrigin() != mask.GetOrigin()
    path = write_dicom_seg(padded, patient["t2_files"], tmp_path / "seg.dcm")
    check_seg_against_mask(path, mask, patient["t2_files"], patient["ids"])


def test_seg_refuses_bad_masks(patient, tmp_path):
    labels = sitk.Cast(patient["mask"], sitk.sitkUInt8) * 2
    with pytest.raises(DicomExportError, match="labels"):
        write_dicom_seg(labels, patient["t2_files"], tmp_path / "a.dcm")
    elsewhere = sitk.Image(patient["mask"])
    elsewhere.SetOrigin(tuple(np.add(elsewhere.GetOrigin(), (500.0, 0.0, 0.0))))
    with pytest.raises(DicomExportError, match="no tumour voxel falls inside the T2"):
        write_dicom_seg(elsewhere, patient["t2_files"], tmp_path / "b.dcm")
    with pytest.raises(DicomExportError, match="1 file"):
        write_dicom_seg(patient["mask"], patient["t2_files"][:1], tmp_path / "c.dcm")
    assert not list(tmp_path.iterdir())


def test_empty_mask_writes_a_seg_with_every_frame(patient, tmp_path):
    empty = sitk.Image(patient["mask"]) * 0
    seg = pydicom.dcmread(write_dicom_seg(empty, patient["t2_files"], tmp_path / "empty.dcm"))
    assert int(seg.NumberOfFrames) == SHAPE[2] and not seg.pixel_array.any()


def test_risk_report_round_trip(patient, tmp_path):
    values = {"risk_score": 0.731, "p_recurrence_36m": 0.284, "surv_prob_12m": 0.93, "surv_prob_36m": 0.716,
              "n_folds": 5}
    path = write_risk_report(values, shuffled(patient["t2_files"]), tmp_path / "sr.dcm",
                             model_description="MultiRecTrainer, folds 0-4, horizon 36 months")
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"    # Comprehensive SR
    assert sr.PatientID == patient["ids"]["PatientID"] and sr.StudyInstanceUID == patient["ids"]["StudyInstanceUID"]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == patient["ids"]["T2SeriesInstanceUID"]
    assert len(evidence.ReferencedSOPSequence) == SHAPE[2]
    items = {c.ConceptNameCodeSequence[0].CodeValue: c for c in sr.ContentSequence}
    assert items["DISCLAIMER"].TextValue == RESEARCH_USE_STATEMENT
    assert "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS" in RESEARCH_USE_STATEMENT
    assert "folds 0-4" in items["MODEL"].TextValue
    for key, value in values.items():
        assert float(items[key].MeasuredValueSequence[0].NumericValue) == pytest.approx(value)
        assert items[key].ConceptNameCodeSequence[0].CodingSchemeDesignator == "99MULTIREC"
    assert items["p_recurrence_36m"].ConceptNameCodeSequence[0].CodeMeaning == \
        "Probability of recurrence within 36 months"
    # a name over 16 characters (the predictor's *_sd columns) gets a short code and says what it is
    sr = pydicom.dcmread(write_risk_report({"p_recurrence_36m_sd": 0.05}, patient["t2_files"], tmp_path / "sd.dcm"))
    code = sr.ContentSequence[1].ConceptNameCodeSequence[0]
    assert len(code.CodeValue) <= 16 and code.CodeValue.startswith("p_recur")
    assert code.CodeMeaning == "Probability of recurrence within 36 months (SD over folds)"
    # highdicom parses it as an SR document
    assert hd.sr.srread(path).ContentSequence[0].TextValue == RESEARCH_USE_STATEMENT


@pytest.mark.parametrize("values,message", [
    ({"risk_score": float("nan")}, "not finite"),
    ({"p_recurrence_36m": 1.5}, "outside \\[0, 1\\]"),
    ({"risk score": 1.0}, "letters, digits"),
    ({}, "no values"),
    ({"risk_score": "high"}, "not a number"),
])
def test_risk_report_refuses_bad_values(patient, tmp_path, values, message):
    with pytest.raises(DicomExportError, match=message):
        write_risk_report(values, patient["t2_files"], tmp_path / "sr.dcm")
    assert not (tmp_path / "sr.dcm").exists()
