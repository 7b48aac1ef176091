"""Issue 23: the converter's bad inputs of round three, fed to the real command.

Each class is given to ``python -m dataset_conversion.convert_larc`` (in a subprocess once per class,
through its ``main(argv)`` for the variants) and checked for exit status 2, an ``error:`` line naming
the patient / file / column and the problem, no traceback, and nothing half-written (no dataset
folder, no temporary folder, no preprocessed folder; with ``--overwrite`` the old dataset unchanged):

1. a schema transform (``log``, ``log1p``) and a development or test patient outside its domain;
2. a schema file whose JSON is not an object (``null``, a list, a number, a string);
3. two files for one series in a patient folder (``T2.nii`` beside ``T2.nii.gz``, ...);
4. ITK's reason for a degenerate / sheared direction matrix, a header promising far more voxels
   than the file holds (refused before ITK reads it), and header fields ITK would silently replace.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clinical.schema import DEFAULT_SCHEMA_PATH, ClinicalSchema, SchemaError
from clinical.tables import ClinicalTableError, read_case_table
from dataset_conversion import convert_larc
import test_bad_inputs
from nnunet_multitask.nifti_integrity import (IncompleteImageError, check_nifti_geometry, check_nifti_size,
                                                find_series_files, itk_error_reason, read_nifti_completely,
                                                split_image_name)

try:
    from cohort_factory import T2_ORIGIN, T2_SPACING
except ImportError:  # tests/ imported as a package
    from tests.cohort_factory import T2_ORIGIN, T2_SPACING

REPO = Path(__file__).resolve().parents[1]
FOLDER = "Dataset501_LARC"
T2_SHAPE = (20, 18, 6)
EXTERNAL_TEST_PATIENT = "HX003"  # centre 3: the external test set
HUGE_SHAPE = (10000, 10000, 10000)


# ============================================================================ helpers
# the nnU-Net folders and the 10-patient cohort of tests/test_bad_inputs.py
roots, cohort = test_bad_inputs.roots, test_bad_inputs.cohort


def arguments(cohort_dir, *extra):
    return ["--cohort", str(cohort_dir), "--dataset-id", "501", "--name", "LARC", "--folds", "2", *extra]


def run_main(cohort_dir, capsys, *extra):
    rc = convert_larc.main(arguments(cohort_dir, *extra))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_command(cohort_dir, *extra):
    """The real command line in a fresh interpreter (the roots come from the monkeypatched environment)."""
    result = subprocess.run([sys.executable, "-m", "dataset_conversion.convert_larc", *arguments(cohort_dir, *extra)],
                            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def assert_nothing_written(roots):
    assert not (roots["raw"] / FOLDER).exists()
    assert not [p for p in roots["raw"].iterdir() if p.name.startswith(".")], "temporary folder left behind"
    assert not (roots["preprocessed"] / FOLDER).exists()


def assert_refused(result, roots, expected):
    rc, out, err = result
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert_nothing_written(roots)
    return err


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def image_path(cohort_dir, patient, name):
    return cohort_dir / "images" / patient / name


def set_cells(cohort_dir, column, values: dict):
    path = cohort_dir / "clinical.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for patient, value in values.items():
        table.loc[table["patient_id"] == patient, column] = value
    table.to_csv(path, index=False)


def schema_with(tmp_path, column, transform) -> Path:
    d = json.loads(DEFAULT_SCHEMA_PATH.read_text())
    d["columns"][column]["transform"] = transform
    path = tmp_path / "schema_with_transform.json"
    path.write_text(json.dumps(d))
    return path


def huge_header_bytes(shape=HUGE_SHAPE, data=b"\0" * 128) -> bytes:
    """A NIfTI-1 single file whose header declares ``shape`` float32 voxels followed by only ``data``."""
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header.set_sform(np.diag([*T2_SPACING, 1.0]), code=1)
    return header.binaryblock + b"\0" * 4 + data


def write_with_affine(path: Path, affine: np.ndarray) -> None:
    """Rewrite ``path`` (same voxels) with ``affine`` as its only orientation (sform; qform unset), as a
    scanner export with a sheared or degenerate orientation would carry."""
    voxels = np.asanyarray(nibabel.load(str(path)).dataobj).astype(np.float32)
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=1)
    header.set_qform(np.eye(4), code=0)
    nibabel.save(nibabel.Nifti1Image(voxels, None, header), str(path))
    assert nibabel.load(str(path)).header["qform_code"] == 0


# ============================================================================ 1. transform domain
def test_transform_domain_is_refused_at_conversion_by_the_command(cohort, roots):
    """The default schema declares ``cea`` with ``"transform": "log"``: CEA = 0 is refused when the
    dataset is converted (it used to surface at training, after planning and preprocessing)."""
    assert ClinicalSchema.load().columns["cea"].transform == "log"
    set_cells(cohort, "cea", {"HX002": "0"})
    err = assert_refused(run_command(cohort), roots,
                         ["clinical.csv", "patient_id HX002", "'cea'", "'0'", "transform 'log'", "needs values > 0"])
    assert "HX001" not in err


@pytest.mark.parametrize("value", ["0", "-2.5", "0.0"])
def test_transform_domain_names_every_development_and_test_patient(cohort, roots, capsys, value):
    """A development patient (HX002, centre 1) and an external test patient (HX003, centre 3) are both
    named; a missing CEA is not an error (it is imputed)."""
    set_cells(cohort, "cea", {"HX002": value, EXTERNAL_TEST_PATIENT: "-1", "HX004": ""})
    err = assert_refused(run_main(cohort, capsys), roots,
                         ["2 problem(s)", f"patient_id HX002: column 'cea': value {value!r}",
                          f"patient_id {EXTERNAL_TEST_PATIENT}: column 'cea': value '-1'",
                          "transform 'log' needs values > 0"])
    assert "HX004" not in err


def test_transform_domain_of_a_schema_given_with_schema(cohort, roots, capsys, tmp_path):
    """``log1p`` (needs x > -1) declared on another column by the user's schema: -1 is refused, -0.5 is not."""
    schema = schema_with(tmp_path, "distance_av_cm", "log1p")
    set_cells(cohort, "distance_av_cm", {"HX005": "-1", "HX006": "-0.5"})
    err = assert_refused(run_main(cohort, capsys, "--schema", str(schema)), roots,
                         ["patient_id HX005", "'distance_av_cm'", "'-1'", "transform 'log1p' needs values > -1",
                          str(schema)])
    assert "HX006" not in err


def test_values_inside_the_domain_convert(cohort, roots, capsys):
    set_cells(cohort, "cea", {"HX002": "0.01", "HX004": ""})
    rc, out, err = run_main(cohort, capsys)
    assert rc == 0, err
    assert (roots["raw"] / FOLDER / "dataset.json").is_file()


def test_case_table_reader_checks_the_domain_too(tmp_path):
    """Training and prediction read clinical.csv with read_case_table: the same refusal, up front."""
    schema = ClinicalSchema.load()
    path = tmp_path / "clinical.csv"
    path.write_text("case_id,centre,age,sex,cea,ct,cn,mrf,emvi,distance_av_cm,ypt,ypn,trg\n"
                    "LARC_0001,1,60,F,0,T3,N1,1,0,5,T2,N0,1\n"
                    "LARC_0002,1,61,M,,T3,N1,1,0,5,T2,N0,1\n")
    with pytest.raises(ClinicalTableError, match=r"case_id LARC_0001: column 'cea': value '0'.*transform 'log'"):
        read_case_table(path, schema)


# ============================================================================ 2. schema not a JSON object
@pytest.mark.parametrize("content,kind", [("null", "null"), ("[]", "a list"), ('[{"columns": {}}]', "a list"),
                                          ("3", "a number"), ("2.5", "a number"), ('"larc"', "a string"),
                                          ("true", "a boolean")])
def test_schema_that_is_not_a_json_object_is_refused(cohort, roots, capsys, tmp_path, content, kind):
    schema = tmp_path / "schema.json"
    schema.write_text(content + "\n")
    err = assert_refused(run_main(cohort, capsys, "--schema", str(schema)), roots,
                         [f"schema file {schema}", "must be a JSON object", f"holds {kind}"])
    assert "TypeError" not in err


def test_schema_null_is_refused_by_the_command(cohort, roots, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text("null")
    assert_refused(run_command(cohort, "--schema", str(schema)), roots,
                   [f"schema file {schema}", "must be a JSON object", "null"])


def test_schema_with_a_column_declared_twice_is_refused(cohort, roots, capsys, tmp_path):
    """JSON keeps the last of two equal keys: a column declared twice would silently lose one declaration."""
    text = DEFAULT_SCHEMA_PATH.read_text()
    schema = tmp_path / "schema.json"
    schema.write_text(text.replace('"cea":', '"cea": {"group": "pretreatment", "type": "numeric"},\n    "cea":', 1))
    assert_refused(run_main(cohort, capsys, "--schema", str(schema)), roots,
                   [f"schema file {schema}", "declares the key 'cea' more than once"])


def test_schema_with_a_byte_order_mark_is_read(cohort, roots, capsys, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_bytes(b"\xef\xbb\xbf" + DEFAULT_SCHEMA_PATH.read_bytes())
    assert ClinicalSchema.load(schema).columns == ClinicalSchema.load().columns


def test_schema_loader_and_from_dict_refuse_non_objects(tmp_path):
    """The one loader (ClinicalSchema.load), used wherever a schema file is read, and from_dict (the
    dataset.json block) name the source."""
    path = tmp_path / "s.json"
    for content in ("null", "[1, 2]", "7", '"x"'):
        path.write_text(content)
        with pytest.raises(SchemaError, match=rf"schema file {path} must be a JSON object"):
            ClinicalSchema.load(path)
    for value in (None, [1], 3, "columns"):
        with pytest.raises(SchemaError, match=r"my block: a schema must be a JSON object"):
            ClinicalSchema.from_dict(value, source="my block")
    with pytest.raises(SchemaError, match=rf"schema file {tmp_path} cannot be read"):
        ClinicalSchema.load(tmp_path)  # a folder
    d = ClinicalSchema.load().to_dict()
    with pytest.raises(SchemaError, match="'id_column' must be a non-empty string, got 5"):
        ClinicalSchema.from_dict({**d, "id_column": 5})
    d["columns"]["ct"]["categories"] = 3
    with pytest.raises(SchemaError, match="categorical column 'ct' must declare distinct 'categories'"):
        ClinicalSchema.from_dict(d)


# ============================================================================ 3. one file per series
def _stray_nii_with_other_voxels(cohort_dir, patient, series="T2"):
    """A leftover uncompressed copy with different voxels beside the expected .nii.gz."""
    expected = image_path(cohort_dir, patient, f"{series}.nii.gz")
    image = sitk.ReadImage(str(expected))
    stray = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) + 1000.0)
    stray.CopyInformation(image)
    path = expected.with_name(f"{series}.nii")
    sitk.WriteImage(stray, str(path))
    return path


def test_itk_reads_the_stray_nii_when_asked_for_the_nii_gz(cohort):
    """Why the stray file matters: ITK's NIfTI reader, asked for T2.nii.gz, reads T2.nii when both exist
    (nibabel, the completeness check, reads T2.nii.gz): the dataset held the stray file's voxels."""
    _stray_nii_with_other_voxels(cohort, "HX002")
    expected = image_path(cohort, "HX002", "T2.nii.gz")
    by_itk = sitk.GetArrayFromImage(sitk.ReadImage(str(expected)))
    by_nibabel = np.asanyarray(nibabel.load(str(expected)).dataobj).transpose(2, 1, 0)
    if np.array_equal(by_itk, by_nibabel):  # a future ITK may stop doing this; the refusal stays right
        pytest.skip("this ITK reads the file it is asked for")
    assert np.allclose(by_itk, by_nibabel + 1000.0)


def test_stray_t2_nii_beside_t2_nii_gz_is_refused_by_the_command(cohort, roots):
    _stray_nii_with_other_voxels(cohort, "HX002")
    assert_refused(run_command(cohort), roots,
                   ["patient HX002", "2 files for series T2", "T2.nii, T2.nii.gz", "one file per series",
                    "keep T2.nii.gz"])


@pytest.mark.parametrize("stray", ["T2.nii", "T2.mha", "T2.nrrd", "t2.nii.gz", "T2.NII.GZ", "T2.hdr", "ADC.nii",
                                   "Kapp.mha", "mask.nii", "Mask.nii.gz"])
def test_two_files_for_one_series_are_refused(cohort, roots, capsys, stray):
    stem = stray.split(".")[0]
    series = next(s for s in (*convert_larc.CHANNELS, "mask") if s.lower() == stem.lower())
    expected = image_path(cohort, "HX004", f"{series}.nii.gz")
    (expected.parent / stray).write_bytes(expected.read_bytes())  # same bytes: refused all the same
    err = assert_refused(run_main(cohort, capsys), roots,
                         ["patient HX004", f"series {series}", stray, f"{series}.nii.gz", "one file per series"])
    assert "HX004" in err.splitlines()[0]


def test_two_stray_files_are_named_and_refused_before_any_image_is_read(cohort, roots, capsys, monkeypatch):
    folder = cohort / "images" / "HX009"
    for name in ("T2.nii", "T2.mha"):
        (folder / name).write_bytes(b"leftover")
    reads = []
    monkeypatch.setattr(convert_larc, "_read_image", lambda path, patient: reads.append(path))
    assert_refused(run_main(cohort, capsys), roots, ["patient HX009", "3 files for series T2",
                                                     "T2.mha, T2.nii, T2.nii.gz"])
    assert reads == []


def test_only_a_file_with_another_ending_is_named_with_a_hint(cohort, roots, capsys):
    t2 = image_path(cohort, "HX002", "T2.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(t2)), str(t2.with_name("T2.nii")))
    t2.unlink()
    assert_refused(run_main(cohort, capsys), roots, ["patient HX002", "missing file", "T2.nii.gz", "found T2.nii",
                                                     "expects T2.nii.gz"])


def test_a_misnamed_diffusion_series_is_not_taken_for_a_missing_one(cohort, roots, capsys):
    adc = image_path(cohort, "HX002", "ADC.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(adc)), str(adc.with_name("ADC.nii")))
    adc.unlink()
    err = assert_refused(run_main(cohort, capsys, "--allow-missing-series"), roots,
                         ["patient HX002", "missing file", "ADC.nii.gz", "found ADC.nii"])
    assert "--allow-missing-series" not in err


def test_other_files_beside_the_series_are_ignored(cohort, roots, capsys):
    """A sidecar (dcm2niix's T2.json) or a note is not a second file of the series."""
    folder = cohort / "images" / "HX002"
    (folder / "T2.json").write_text("{}")
    (folder / "T2.nii.gz.md5").write_text("0")
    (folder / "notes.txt").write_text("x")
    rc, out, err = run_main(cohort, capsys)
    assert rc == 0, err


def test_the_file_checked_is_the_file_converted(cohort, roots, capsys):
    """series_file is the one resolver: it returns the expected path only when that exact file is the
    only one of the series; the dataset's T2 holds exactly its voxels."""
    folder = cohort / "images" / "HX002"
    path, present, hint = convert_larc.series_file(folder, "T2.nii.gz", "HX002")
    assert (path, present, hint) == (folder / "T2.nii.gz", True, "")
    rc, out, err = run_main(cohort, capsys)
    assert rc == 0, err
    case = pd.read_csv(roots["raw"] / FOLDER / "patient_mapping.csv").set_index("patient_id").loc["HX002", "case_id"]
    written_path = roots["raw"] / FOLDER / "imagesTr" / f"{case}_0000.nii.gz"
    if not written_path.is_file():
        written_path = roots["raw"] / FOLDER / "imagesTs" / f"{case}_0000.nii.gz"
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(written_path)))
    source = np.asanyarray(nibabel.load(str(folder / "T2.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(written, source)


def test_find_series_files_for_the_predictor(tmp_path):
    """The public helper the predictor can use for one file per case and channel."""
    assert split_image_name("T2.nii.gz") == ("T2", ".nii.gz")
    assert split_image_name("LARC_0001_0000.NII") == ("LARC_0001_0000", ".NII")
    assert split_image_name("T2.json") is None and split_image_name(".nii.gz") is None
    for name in ("LARC_0001_0000.nii.gz", "LARC_0001_0000.nii", "larc_0001_0000.nii.gz", "LARC_0001_0001.nii.gz",
                 "LARC_0001_0000.json", "LARC_0001_00000.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "LARC_0001_0000.mha").mkdir()  # a folder is not a file
    expected = [tmp_path / n for n in ("LARC_0001_0000.nii", "LARC_0001_0000.nii.gz", "larc_0001_0000.nii.gz")]
    assert find_series_files(tmp_path, "LARC_0001_0000") == expected
    assert find_series_files(tmp_path, "LARC_0001_0001") == [tmp_path / "LARC_0001_0001.nii.gz"]
    listing = [p.name for p in tmp_path.iterdir()]  # listed once by the caller: folders are the caller's business
    assert find_series_files(tmp_path, "LARC_0001_0000", names=listing)[-1] == tmp_path / "larc_0001_0000.nii.gz"
    assert find_series_files(tmp_path / "absent", "x") == []


def test_stray_file_with_overwrite_keeps_the_old_dataset(cohort, roots, capsys):
    rc, out, err = run_main(cohort, capsys)
    assert rc == 0, err
    before = tree(roots["raw"] / FOLDER)
    _stray_nii_with_other_voxels(cohort, "HX005", "Dapp")
    rc, out, err = run_main(cohort, capsys, "--overwrite")
    assert rc == 2 and "Traceback" not in err
    assert "patient HX005" in err and "Dapp.nii, Dapp.nii.gz" in err
    assert tree(roots["raw"] / FOLDER) == before
    assert not [p for p in roots["raw"].iterdir() if p.name.startswith(".")]


# ============================================================================ 4. ITK's reason, header promises
SHEARED = np.array([[0.7, 0.35, 0.0, T2_ORIGIN[0]], [0.0, 0.7, 0.0, T2_ORIGIN[1]], [0.0, 0.0, 3.0, T2_ORIGIN[2]],
                    [0.0, 0.0, 0.0, 1.0]])
SINGULAR = np.array([[0.7, 0.0, 0.0, T2_ORIGIN[0]], [0.0, 0.0, 0.0, T2_ORIGIN[1]], [0.0, 0.0, 3.0, T2_ORIGIN[2]],
                     [0.0, 0.0, 0.0, 1.0]])


def test_degenerate_direction_names_itks_reason_through_the_command(cohort, roots):
    write_with_affine(image_path(cohort, "HX002", "T2.nii.gz"), SINGULAR)
    err = assert_refused(run_command(cohort), roots,
                         ["patient HX002", "T2.nii.gz", "cannot read",
                          "ITK only supports orthonormal direction cosines", "No orthonormal definition found",
                          "sheared or degenerate"])
    assert ".cxx" not in err and "Exception thrown in SimpleITK" not in err


@pytest.mark.parametrize("affine,name", [(SHEARED, "T2.nii.gz"), (SINGULAR, "mask.nii.gz"), (SHEARED, "Kapp.nii.gz")])
def test_non_orthonormal_direction_is_refused_with_itks_reason(cohort, roots, capsys, affine, name):
    write_with_affine(image_path(cohort, "HX007", name), affine)
    err = assert_refused(run_main(cohort, capsys), roots,
                         ["patient HX007", name, "ITK only supports orthonormal direction cosines"])
    assert ".cxx" not in err


def test_itk_error_reason_extracts_the_reason():
    cases = {
        "Exception thrown in SimpleITK ImageFileReader_Execute: /x/itkNiftiImageIO.cxx:2135:\n"
        "ITK ERROR: ITK only supports orthonormal direction cosines.  No orthonormal definition found!":
            "ITK only supports orthonormal direction cosines. No orthonormal definition found!",
        "Exception thrown in SimpleITK ImageFileReader_Execute: /x/sitkImageReaderBase.cxx:99:\n"
        'sitk::ERROR: Unable to determine ImageIO reader for "a.nii.gz"':
            'Unable to determine ImageIO reader for "a.nii.gz"',
        "Exception thrown in SimpleITK ReadImage: /x/itkImageFileReader.hxx:135:\n"
        "ITK ERROR: ImageFileReader(0x55d0c3a0): Could not create IO object for reading file a.xyz\n"
        "  Tried to create one of the following:":
            "Could not create IO object for reading file a.xyz Tried to create one of the following:",
        "/x/y.cxx:12:\nsomething went wrong\n/x/z.hxx:9:": "something went wrong",
        "": "RuntimeError",
    }
    for text, reason in cases.items():
        assert itk_error_reason(RuntimeError(text)) == reason
    # a real one
    with pytest.raises(RuntimeError) as info:
        sitk.ReadImage(str(REPO / "does-not-exist.nii.gz"))
    assert ".cxx" not in itk_error_reason(info.value) and itk_error_reason(info.value)


def test_huge_header_in_a_small_gzip_is_refused_before_itk_reads_it_by_the_command(cohort, roots):
    t2 = image_path(cohort, "HX002", "T2.nii.gz")
    t2.write_bytes(gzip.compress(huge_header_bytes()))
    assert t2.stat().st_size < 200
    err = assert_refused(run_command(cohort), roots,
                         ["patient HX002", "T2.nii.gz", "shape (10000, 10000, 10000)", "4 byte(s) per voxel",
                          "promises 4000000000352", "holds 480 bytes (decompressed)", "less than 1%"])
    assert "MemoryError" not in err and "allocate" not in err


@pytest.mark.parametrize("name", ["T2.nii.gz", "ADC.nii.gz", "mask.nii.gz"])
def test_huge_header_never_reaches_itk(cohort, roots, capsys, monkeypatch, name):
    path = image_path(cohort, "HX006", name)
    path.write_bytes(gzip.compress(huge_header_bytes(data=b"\0" * 4096)))
    read_by_itk = []
    real_read = sitk.ReadImage

    def guarded_read(file_name, *args, **kwargs):
        read_by_itk.append(Path(file_name).name)
        assert Path(file_name) != path, "ITK was asked to read the file whose header promises terabytes"
        return real_read(file_name, *args, **kwargs)

    monkeypatch.setattr(convert_larc.sitk, "ReadImage", guarded_read)
    assert_refused(run_main(cohort, capsys), roots,
                   ["patient HX006", name, "promises 4000000000352", "holds 4448 bytes (decompressed)"])


def edit_header(path: Path, offset: int, fmt: str, value) -> None:
    """Overwrite one field of a .nii.gz file's stored NIfTI-1 header (little-endian), nothing else."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(gzip.compress(bytes(raw)))


# offsets in the NIfTI-1 header: dim[0] 40, dim[3] 46, datatype 70, pixdim[1] 80, pixdim[3] 88, srow_x[3] 292
HEADER_DAMAGE = {
    "voxel size 0": ((80, "<f", 0.0), ["pixdim[1..3] = (0, 0.7, 3)", "not finite and > 0"]),
    "voxel size NaN": ((84, "<f", float("nan")), ["pixdim[1..3] = (0.7, nan, 3)", "not finite and > 0"]),
    "negative voxel size": ((88, "<f", -3.0), ["pixdim[1..3] = (0.7, 0.7, -3)", "not finite and > 0"]),
    "NaN origin in the sform": ((292, "<f", float("nan")), ["sform holds a NaN or infinite value"]),
    "size 0": ((46, "<h", 0), ["declares no voxels", "(20, 18, 0)"]),
    "negative size": ((46, "<h", -6), ["negative size", "(20, 18, -6)"]),
    "dim[0] out of range": ((40, "<h", 9), ["dim[0] = 9", "1 to 7"]),
    "unknown datatype": ((70, "<h", 9999), ["unknown datatype code 9999"]),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
def test_header_geometry_itk_would_replace_is_refused(cohort, roots, capsys, damage):
    """Fields ITK would silently replace (a voxel size of 0 or NaN read as 1 mm, a negative one folded into
    the direction) or misread (no voxels, a bad dim[0] or datatype) are named before ITK reads the file."""
    (offset, fmt, value), expected = HEADER_DAMAGE[damage]
    path = image_path(cohort, "HX008", "T2.nii.gz")
    edit_header(path, offset, fmt, value)
    with pytest.raises(IncompleteImageError):
        check_nifti_geometry(path)
    assert_refused(run_main(cohort, capsys), roots, ["patient HX008", "T2.nii.gz", *expected])


def test_check_nifti_size_compares_the_promise_with_the_file(tmp_path, cohort):
    # .nii: compared with the size on disk
    plain = tmp_path / "huge.nii"
    plain.write_bytes(huge_header_bytes())
    with pytest.raises(IncompleteImageError, match=r"holds 480 bytes but its header .* promises 4000000000352"):
        check_nifti_size(plain)
    # .nii.gz: compared with the decompressed stream
    packed = tmp_path / "huge.nii.gz"
    packed.write_bytes(gzip.compress(huge_header_bytes()))
    with pytest.raises(IncompleteImageError, match=r"holds 480 bytes \(decompressed\).*promises 4000000000352"):
        check_nifti_size(packed)
    with pytest.raises(IncompleteImageError, match="promises 4000000000352"):
        read_nifti_completely(packed)
    # a 128-byte file cannot even hold its header
    tiny = tmp_path / "tiny.nii"
    tiny.write_bytes(huge_header_bytes()[:128])
    with pytest.raises(IncompleteImageError, match="holds 128 bytes, fewer than its 348-byte NIfTI header"):
        check_nifti_size(tiny)
    with pytest.raises(IncompleteImageError, match="not a single-file NIfTI"):
        check_nifti_size(_write(tmp_path / "text.nii", b"not an image at all"))
    with pytest.raises(IncompleteImageError, match="gzip stream is damaged"):
        check_nifti_size(_write(tmp_path / "text.nii.gz", b"not an image at all"))
    # a good file: the promise is exactly the decompressed size, as read_nifti_completely sees it
    good = image_path(cohort, "HX001", "T2.nii.gz")
    assert check_nifti_size(good) == len(gzip.decompress(good.read_bytes()))
    sitk.WriteImage(sitk.ReadImage(str(good)), str(tmp_path / "good.nii"))
    assert check_nifti_size(tmp_path / "good.nii") == (tmp_path / "good.nii").stat().st_size


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_check_nifti_size_streams_in_constant_memory(tmp_path):
    """A 64 MB (decompressed) image is checked holding about one 1 MiB chunk at a time."""
    shape = (256, 256, 256)
    path = tmp_path / "zeros.nii.gz"
    raw = huge_header_bytes(shape=shape, data=b"")
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(raw)
        block = b"\0" * (1 << 22)
        for _ in range(int(np.prod(shape)) * 4 // len(block)):
            f.write(block)
    tracemalloc.start()
    try:
        assert check_nifti_size(path) == 352 + int(np.prod(shape)) * 4
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * (1 << 20), peak
