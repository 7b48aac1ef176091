"""New patients in the cohort layout, made ready for ``nnUNetv2_predict_multitask``.

A clinic holds what the converter reads, less what only training needs: no tumour mask and no
follow-up::

    new/clinical.csv                      patient_id, centre, <the model's clinical columns>
    new/images/<patient_id>/T2.nii.gz     the case's grid
    new/images/<patient_id>/ADC.nii.gz    diffusion maps on their own grids (e.g. what
    new/images/<patient_id>/Dapp.nii.gz   ``multirec_import_dicom`` writes)
    new/images/<patient_id>/Kapp.nii.gz

``nnUNetv2_predict_multitask -i new ...`` calls :func:`prepare_new_patients`, which checks and
resamples every patient with the converter's own function (``convert_larc._convert_case``: one
file per series, complete and finite images, no constant series, each map covering the T2 volume,
linear resampling onto T2), so a new patient's channels are exactly what the converter would have
written for it as a test case. The case ids are ``NEW_0001``, ``NEW_0002``, ... in the order of the
sorted patient ids; ``patient_mapping.csv`` in the output folder is the only file that names the
patients (as the converter's).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional

import pandas as pd

from clinical.tables import CASE_ID_COLUMN, read_clinical_table, write_case_table
from dataset_conversion.convert_larc import (CHANNELS, ConversionError, _check_one_file_per_series,
                                             _convert_case, _images_by_patient)
from nnunet_multitask.contract import DatasetContract
from nnunet_multitask.prediction_artifact import PATIENT_MAPPING_CSV

#: Case id of the i-th new patient (1-based, sorted patient ids).
NEW_CASE_FORMAT = "NEW_{:04d}"
CLINICAL_FILE = "clinical.csv"
COHORT_ID_COLUMN = "patient_id"


@dataclass(frozen=True)
class PreparedPatients:
    """What :func:`prepare_new_patients` made.

    Attributes
    ----------
    images : str
        nnU-Net's input layout (``<case>_<XXXX>.nii.gz``, every channel on the case's T2 grid; a
        missing diffusion series has no file, as for a converted test case).
    clinical : str or None
        The clinical rows keyed by case id (the dataset's ``clinical.csv`` layout); None when the
        cohort folder has no ``clinical.csv`` and none was given.
    clinical_source : str or None
        The patient-keyed table those rows were read from (what ``predictions.json`` names).
    mapping : pandas.DataFrame
        ``case_id``, ``patient_id``.
    """

    images: str
    clinical: Optional[str]
    mapping: pd.DataFrame
    clinical_source: Optional[str] = None

    def publish_mapping(self, output_folder: str) -> None:
        """Write ``patient_mapping.csv`` into the output folder (atomically)."""
        path = Path(output_folder) / PATIENT_MAPPING_CSV
        tmp = path.with_name(f".{path.name}.tmp")
        self.mapping.to_csv(tmp, index=False)
        os.replace(tmp, path)


def _check_channels(dataset_json: Mapping) -> None:
    names = tuple(dataset_json["channel_names"][str(i)] for i in range(len(dataset_json["channel_names"])))
    if names != CHANNELS:
        raise ConversionError(f"the model's channels {names} are not the cohort layout's {CHANNELS}: give an input "
                              f"folder in nnU-Net's layout (<case>_<XXXX>.nii.gz) instead of a cohort folder")


def _clinical_rows(clinical_path: Path, contract: DatasetContract, mapping: pd.DataFrame, out: Path) -> str:
    """The new patients' clinical rows, validated against the model's schema and keyed by case id;
    follow-up columns, when present, are not read (said on stderr)."""
    schema = contract.schema()
    # the dataset's table is keyed by case id; the cohort's, as the converter reads it, by patient id
    table = read_clinical_table(clinical_path, replace(schema, id_column=COHORT_ID_COLUMN), require_outcomes=False)
    follow_up = [c for c in (schema.time_column, schema.event_column) if c in table.columns]
    if follow_up:
        print(f"nnUNetv2_predict_multitask: note: {clinical_path}: follow-up column(s) {follow_up} are not read for "
              f"prediction", file=sys.stderr)
        table = table.drop(columns=follow_up)
    patients = set(mapping["patient_id"])
    without_images = sorted(set(table.index) - patients)
    if without_images:
        raise ConversionError(f"{clinical_path}: patient(s) {without_images[:5]} have a clinical row but no folder "
                              f"under images/: every row must be a patient to predict")
    case_of = dict(zip(mapping["patient_id"], mapping["case_id"]))
    table = table.loc[[p for p in mapping["patient_id"] if p in table.index]]
    table.index = pd.Index([case_of[p] for p in table.index], name=CASE_ID_COLUMN)
    path = out / CLINICAL_FILE
    write_case_table(table, path, schema)
    return str(path)


def prepare_new_patients(cohort_dir: str, dataset_json: Mapping, work_dir: str, clinical: Optional[str] = None,
                         allow_missing_series: bool = False) -> PreparedPatients:
    """Check and resample a cohort folder of new patients into nnU-Net's input layout.

    Parameters
    ----------
    cohort_dir : str
        ``images/<patient_id>/`` folders with T2 and the diffusion maps (no mask needed; a
        ``mask.nii.gz`` present is not read) and optionally ``clinical.csv``.
    dataset_json : mapping
        The model's ``dataset.json`` (channels and the ``multitask`` block with the clinical schema).
    work_dir : str
        An empty folder that receives ``images/`` and ``clinical.csv``; the caller removes it.
    clinical : str, optional
        A clinical CSV in the cohort layout (``patient_id`` keyed) instead of ``cohort_dir/clinical.csv``.
    allow_missing_series : bool
        Patients may lack ADC, Dapp or Kapp (the predictor then needs ``--allow-missing-series`` too).

    Raises
    ------
    ConversionError, clinical.schema.SchemaError
        Naming the patient, the file and the problem, as the converter does.
    """
    _check_channels(dataset_json)
    cohort, out = Path(cohort_dir), Path(work_dir)
    patients = _images_by_patient(cohort / "images")
    if not patients:
        raise ConversionError(f"{cohort / 'images'}: no patient folder")
    _check_one_file_per_series(cohort, sorted(patients))
    mapping = pd.DataFrame({"case_id": [NEW_CASE_FORMAT.format(i + 1) for i in range(len(patients))],
                            "patient_id": sorted(patients)})
    images = out / "images"
    images.mkdir(parents=True)
    for case_id, patient_id in zip(mapping["case_id"], mapping["patient_id"]):
        _convert_case(patients[patient_id], patient_id, case_id, images, None,
                      allow_missing_series=allow_missing_series, write_missing_as_zeros=False)
    clinical_path = Path(clinical) if clinical is not None else cohort / CLINICAL_FILE
    rows = None
    if clinical is not None or clinical_path.is_file():
        rows = _clinical_rows(clinical_path, DatasetContract.from_dataset_json(dataset_json), mapping, out)
    return PreparedPatients(images=str(images), clinical=rows, mapping=mapping,
                            clinical_source=str(clinical_path.resolve()) if rows is not None else None)
