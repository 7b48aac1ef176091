"""A prediction run into an output folder: checked first, staged, resumable, published all-or-nothing.

:func:`predict_folder` checks the model, every input case, the clinical table and the output folder
before predicting anything, then predicts into a hidden staging folder inside the output folder
(:data:`nnunet_multitask.publish.RUN_STAGING`) and moves the results into place only when every
case has succeeded (``predictions.csv`` last). A failure leaves the output folder as it was.

Each finished case leaves its row in the staging folder, so ``--continue`` predicts only the cases
a killed run had not finished (same model, settings and inputs: :func:`run_fingerprint`);
``--keep-going`` predicts each case on its own and publishes the others with ``failures.csv``.
One part of a ``-num_parts`` run predicts its share (:mod:`nnunet_multitask.prediction_parts`)
and records it in ``predictions.json`` for ``--merge``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from os.path import isdir, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence

import pandas as pd

from nnunet_multitask.nifti_integrity import IncompleteImageError, is_nifti, read_nifti_completely
from nnunet_multitask.checkpoints import file_sha256
from nnunet_multitask.prediction_artifact import (FAILURES_CSV, PREDICTIONS_CSV, PREDICTIONS_JSON,
                                                  MultitaskPredictionError, PartRecord, case_list_sha256)
from nnunet_multitask.prediction_engine import MultiTaskPredictor
from nnunet_multitask.prediction_inputs import (check_inputs, check_missing_series_support, input_availability,
                                                misaligned_channels, prepare_input_folder)
from nnunet_multitask.prediction_parts import (part_record, part_share, refuse_other_part_in_folder,
                                               share_input_folder)
from nnunet_multitask.publish import (RUN_STAGING, atomic_write, check_output_folder, new_staging_folder,
                                      output_folder_lock, publish_files)

#: inside the run's staging folder: the run's fingerprint, and one row per finished case
RUN_RECORD = "run.json"
CASE_RECORDS = "case_records"


def predict_folder(predictor: MultiTaskPredictor, input_folder: str, output_folder: str,
                   clinical: Optional[pd.DataFrame | str] = None, impute_missing_clinical: bool = False,
                   num_processes_preprocessing: int = 0, num_processes_segmentation_export: int = 0,
                   checked_cases: Optional[List[str]] = None, allow_missing_series: bool = False,
                   part_id: int = 0, num_parts: int = 1, resample_to_first: bool = False,
                   resume: bool = False, keep_going: bool = False) -> pd.DataFrame:
    """Predict every case of an input folder: segmentations, ``predictions.csv``, ``predictions.json``.

    Everything that can be checked is checked first (input files and channels, clinical columns,
    types, categories and rows, the output folder); then the cases are predicted into a hidden
    staging folder inside ``output_folder``, and the files are moved into ``output_folder`` only
    when every case has succeeded (``predictions.csv`` last). On any error the staging folder is
    removed and ``output_folder`` keeps what it held before.

    Parameters
    ----------
    predictor : MultiTaskPredictor
        Initialised from a trained model folder.
    input_folder, output_folder : str
    clinical : DataFrame, str or None
        See :meth:`MultiTaskPredictor.set_clinical_table` (None: the dataset's clinical table).
    impute_missing_clinical : bool
    num_processes_preprocessing, num_processes_segmentation_export : int
        Both 0: nnU-Net's sequential path (no worker processes).
    checked_cases : list of str, optional
        The result of ``check_inputs`` on this input folder when the caller has just run it (the CLI
        does, before loading the checkpoints), so the images are not read in full twice.
    allow_missing_series : bool
        Cases may lack series other than T2: they are filled as at conversion (zeros on the T2
        grid) and flagged to a model trained for it (``channel_availability``); a model trained
        without it refuses such cases unless it does not use the missing series. predictions.csv
        names each case's real series (``series_available``).
    part_id, num_parts : int
        Split inference (:mod:`nnunet_multitask.prediction_parts`): predict only the share
        ``sorted(cases)[part_id::num_parts]`` (nnU-Net's) and record the part in
        ``predictions.json`` for ``--merge``. Every case is still checked, so every part refuses
        what a single run would refuse.
    resample_to_first : bool
        A channel whose grid (size, spacing, origin, direction) differs from the case's first
        channel's is resampled onto it (linear) instead of refused; predictions.json lists them.
    resume : bool
        ``--continue``: pick up a run into this output folder that was killed, without predicting
        its finished cases again (it must have used the same model, settings and inputs).
    keep_going : bool
        ``--keep-going``: a case that fails while it is predicted or exported (after the checks)
        is written to ``failures.csv`` with its reason and the others are published;
        ``predictions.json`` then says ``"complete": false``.

    The output folder is held with :func:`output_folder_lock` for the run: a second run into it
    is refused, and staging folders of killed runs are removed.

    Returns
    -------
    pandas.DataFrame
        The table written to ``predictions.csv``.
    """
    cases = checked_cases if checked_cases is not None else \
        check_inputs(input_folder, predictor.dataset_json, allow_missing_series, resample_to_first)
    if os.path.realpath(input_folder) == os.path.realpath(output_folder):
        raise MultitaskPredictionError(f"-o {output_folder} is the input folder -i: predictions, plans and "
                                       f"segmentations would be written among the input images; use another folder")
    availability = input_availability(input_folder, predictor.dataset_json, cases)
    check_missing_series_support(predictor.head_config, predictor.dataset_json, availability)
    split = (part_id, num_parts) != (0, 1)
    if split:
        availability = {c: availability[c] for c in part_share(cases, part_id, num_parts)}
    predictor.case_availability, predictor.allow_missing_series = availability, allow_missing_series
    predictor.misaligned_channels = (misaligned_channels(input_folder, predictor.dataset_json, list(availability))
                                     if resample_to_first else {})
    predictor.set_clinical_table(clinical, impute_missing=impute_missing_clinical)
    predictor.check_clinical_rows(cases)
    check_output_folder(output_folder)
    with output_folder_lock(output_folder, resume=resume):
        if split:
            return _predict_part(predictor, input_folder, output_folder, cases, part_id, num_parts,
                                num_processes_preprocessing, num_processes_segmentation_export,
                                resume=resume, keep_going=keep_going)
        return _predict_into(predictor, input_folder, output_folder, cases, num_processes_preprocessing,
                             num_processes_segmentation_export, resume=resume, keep_going=keep_going)



def run_fingerprint(predictor: MultiTaskPredictor, input_folder: str, cases: Sequence[str]) -> dict:
    """What a run must share with the killed run it continues (``--continue``): the model and its
    checkpoints, the settings, the inputs (case list, the clinical table's bytes)."""
    source = predictor.clinical_table_source
    prov = predictor.provenance
    return {"model_folder": prov.get("model_folder"), "checkpoint_sha256": prov.get("checkpoint_sha256"),
            "folds": prov.get("folds"), "checkpoint": prov.get("checkpoint"),
            "tile_step_size": predictor.tile_step_size, "use_mirroring": predictor.use_mirroring,
            "input_folder": predictor.input_label or os.path.abspath(input_folder),
            "cases_sha256": case_list_sha256(cases),
            "clinical_table_sha256": file_sha256(source) if source and isfile(source) else source,
            "impute_missing_clinical": predictor.impute_missing_clinical,
            "allow_missing_series": predictor.allow_missing_series,
            "resampled_channels": {c: list(v) for c, v in sorted(predictor.misaligned_channels.items())}}


def _open_run_staging(output_folder: str, fingerprint: dict, resume: bool) -> str:
    """The run's staging folder: reused with ``resume`` when a killed run with the same
    fingerprint left it, otherwise new."""
    staging = join(output_folder, RUN_STAGING)
    record = join(staging, RUN_RECORD)
    if resume and isdir(staging):
        try:
            with open(record) as f:
                earlier = json.load(f)
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict) and earlier == json.loads(json.dumps(fingerprint)):
            return staging
        differing = sorted(k for k in fingerprint if not isinstance(earlier, dict) or
                           earlier.get(k) != json.loads(json.dumps(fingerprint))[k])
        raise MultitaskPredictionError(
            f"--continue: the interrupted run in {output_folder} was started with other inputs or settings "
            f"(differing: {differing}); continue it with the same model, folds, flags, input folder and clinical "
            f"table, or run without --continue to start again (its finished cases are then discarded)")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(join(staging, CASE_RECORDS))
    atomic_write(record, json.dumps(fingerprint, indent=2))
    return staging


def _finished_cases(staging: str, cases: Sequence[str], ending: str) -> List[str]:
    """Cases a killed run finished: their head record and a complete segmentation in staging."""
    done = []
    for c in cases:
        seg = join(staging, c + ending)
        if not (isfile(join(staging, CASE_RECORDS, c + ".json")) and isfile(seg)):
            continue
        if is_nifti(seg):
            try:  # an export killed half-way leaves a file cut short: predict that case again
                read_nifti_completely(seg)
            except (IncompleteImageError, OSError, ValueError):
                continue
        done.append(c)
    return done


def _case_links(source: str, cases: Sequence[str], ending: str, folder: str) -> str:
    """``folder`` filled with links to the given cases' channel files in ``source``."""
    wanted, pattern = set(cases), re.compile(r"(.+)_\d{4}" + re.escape(ending))
    for name in sorted(os.listdir(source)):
        m = pattern.fullmatch(name)
        if m is not None and m.group(1) in wanted:
            os.symlink(os.path.realpath(join(source, name)), join(folder, name))
    return folder


def _run_nnunet(predictor: MultiTaskPredictor, source: str, staging: str, npp: int, nps: int) -> None:
    if npp == 0 and nps == 0:
        predictor.predict_from_files_sequential(source, staging, overwrite=True)
    else:
        predictor.predict_from_files(source, staging, overwrite=True, num_processes_preprocessing=max(1, npp),
                                     num_processes_segmentation_export=max(1, nps))


def _predict_cases_isolated(predictor: MultiTaskPredictor, source: str, staging: str, cases: Sequence[str],
                            output_folder: str) -> Dict[str, str]:
    """``--keep-going``: each case on its own (nnU-Net's sequential path); a case that fails is
    recorded with its reason, its partial outputs are removed, and the others go on."""
    ending = predictor.dataset_json["file_ending"]
    failures = {}
    for case in cases:
        links = new_staging_folder(output_folder, "case_")
        try:
            _run_nnunet(predictor, _case_links(source, [case], ending, links), staging, 0, 0)
        except Exception as e:  # noqa: BLE001 -- isolation is the point: any failure of one case
            failures[case] = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"nnUNetv2_predict_multitask: case {case} failed, going on with the others: {failures[case]}",
                  file=sys.stderr)
            for path in (join(staging, case + ending), join(staging, CASE_RECORDS, case + ".json")):
                with contextlib.suppress(OSError):
                    os.remove(path)
        finally:
            shutil.rmtree(links, ignore_errors=True)
    return failures


def _predict_into(predictor: MultiTaskPredictor, input_folder: str, output_folder: str, cases: List[str],
                  num_processes_preprocessing: int, num_processes_segmentation_export: int,
                  resume: bool = False, keep_going: bool = False, part: Optional[PartRecord] = None,
                  fingerprint_folder: Optional[str] = None) -> pd.DataFrame:
    """Predict ``cases`` into the run's staging folder and publish it (module docstring); ``part``:
    the part record of one part of a ``-num_parts`` run; ``fingerprint_folder``: the input folder the
    user named, when ``input_folder`` is a temporary one (a part's share), so a continued run matches.

    Each finished case leaves its head record in the staging folder, so ``resume`` (``--continue``)
    predicts only the cases a killed run had not finished; ``keep_going`` isolates the cases and
    publishes the others with ``failures.csv``.
    """
    predictor.head_results = {}
    staging = _open_run_staging(output_folder, run_fingerprint(predictor, fingerprint_folder or input_folder, cases),
                                resume)
    ending = predictor.dataset_json["file_ending"]
    done = _finished_cases(staging, cases, ending) if resume else []
    if done:
        print(f"nnUNetv2_predict_multitask: --continue: {len(done)} of {len(cases)} cases were finished by the "
              f"interrupted run; predicting the other {len(cases) - len(done)}", file=sys.stderr)
    todo = [c for c in cases if c not in set(done)]
    # cases with missing series (or channels to resample) are predicted from a prepared folder; it
    # carries the staging prefix, so a killed run's copy is removed like a staging folder
    filled = None
    if any((a == 0).any() for a in predictor.case_availability.values()) or predictor.misaligned_channels:
        filled = new_staging_folder(output_folder, "input_")
        prepare_input_folder(input_folder, filled, predictor.dataset_json,
                              {c: predictor.case_availability[c] for c in todo if c in predictor.case_availability},
                              predictor.misaligned_channels)
    source, subset, failures = filled or input_folder, None, {}
    predictor.case_record_folder = join(staging, CASE_RECORDS)
    try:
        if keep_going:
            failures = _predict_cases_isolated(predictor, source, staging, todo, output_folder)
        elif todo:
            if done:  # only the unfinished cases, from a folder of links to them
                subset = _case_links(source, todo, ending,
                                     new_staging_folder(output_folder, "todo_"))
            _run_nnunet(predictor, subset or source, staging, num_processes_preprocessing,
                        num_processes_segmentation_export)
        table = _publish_run(predictor, staging, output_folder, cases, failures, [input_folder, filled, subset],
                             part)
    except Exception:
        # a failure (not a kill) leaves the output folder as it was; a killed run leaves its staging
        # folder for --continue
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        predictor.case_record_folder = None
        for folder in (filled, subset):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return table


def _publish_run(predictor: MultiTaskPredictor, staging: str, output_folder: str, cases: List[str],
                 failures: Mapping[str, str], inputs: Sequence[Optional[str]],
                 part: Optional[PartRecord] = None) -> pd.DataFrame:
    """Check that every case is predicted or failed, write the tables into staging and move
    everything into the output folder (``predictions.csv`` last)."""
    ending = predictor.dataset_json["file_ending"]
    records = join(staging, CASE_RECORDS)
    predicted = sorted(c for c in cases if isfile(join(records, c + ".json")))
    if failures and not predicted:
        raise MultitaskPredictionError(f"every case failed, nothing to publish: {dict(list(failures.items())[:3])}")
    if sorted(predicted + list(failures)) != sorted(cases):
        raise MultitaskPredictionError(f"predicted cases {predicted} and failed cases {sorted(failures)} differ "
                                       f"from the input cases {cases}")
    absent = [c for c in predicted if not isfile(join(staging, c + ending))]
    if absent:
        raise MultitaskPredictionError(f"nnU-Net wrote no segmentation for case(s) {absent}")
    args_json = join(staging, "predict_from_raw_data_args.json")
    if isfile(args_json):  # name the real folders, not the staging or prepared ones, in nnU-Net's record
        with open(args_json) as f:
            text = f.read()
        text = text.replace(staging, os.path.abspath(output_folder))
        for folder in inputs[1:]:
            if folder is not None:
                text = text.replace(folder, os.path.abspath(inputs[0]))
        if predictor.input_label is not None:  # images prepared from a cohort folder: name the cohort folder
            text = text.replace(os.path.abspath(inputs[0]), predictor.input_label)
        atomic_write(args_json, text)
    rows = []
    for c in predicted:
        with open(join(records, c + ".json")) as f:
            rows.append(json.load(f))
    table = pd.DataFrame(rows)
    table = predictor.write_predictions(staging, table, failures, part=part)  # recalibrated when asked
    shutil.rmtree(records)
    os.remove(join(staging, RUN_RECORD))
    publish_files(staging, output_folder, last=(PREDICTIONS_JSON, PREDICTIONS_CSV))
    # what an earlier run into this folder left that this run's tables do not describe: its failures
    # list, the segmentation of a case that failed now
    stale = [join(output_folder, c + ending) for c in failures]
    if not failures:
        stale.append(join(output_folder, FAILURES_CSV))
    for path in stale:
        if isfile(path):
            os.remove(path)
    return table


def _predict_part(predictor: MultiTaskPredictor, input_folder: str, output_folder: str, cases: Sequence[str],
                  part_id: int, num_parts: int, num_processes_preprocessing: int = 0,
                  num_processes_segmentation_export: int = 0, resume: bool = False,
                  keep_going: bool = False) -> pd.DataFrame:
    """Predict part ``part_id`` of ``num_parts`` into ``output_folder`` (the caller,
    :func:`predict_folder`, has checked every case and holds the folder's lock): the share's
    segmentations and a partial ``predictions.csv`` / ``predictions.json`` with the part record,
    all-or-nothing as a full run."""
    share = part_share(cases, part_id, num_parts)
    refuse_other_part_in_folder(output_folder, part_id, num_parts)
    record = part_record(cases, part_id, num_parts, input_folder, predictor.clinical_table_source)
    with share_input_folder(input_folder, share, predictor.dataset_json["file_ending"]) as share_folder:
        table = _predict_into(predictor, share_folder, output_folder, share, num_processes_preprocessing,
                              num_processes_segmentation_export, resume=resume, keep_going=keep_going, part=record,
                              fingerprint_folder=input_folder)
        args_json = join(output_folder, "predict_from_raw_data_args.json")
        if isfile(args_json):  # nnU-Net's record names the real input folder, not the temporary share
            with open(args_json) as f:
                text = f.read()
            atomic_write(args_json, text.replace(share_folder, os.path.abspath(input_folder)))
    return table

