"""Split inference (``-num_parts N -part_id K``) and the merge of its parts (``--merge``).

As with ``nnUNetv2_predict``, part K of N predicts the share ``sorted(cases)[K::N]`` of the input
folder's cases (nnU-Net's own slicing in ``_manage_input_and_output_lists``). Each part writes
into its **own** output folder: the segmentations of its share and a partial ``predictions.csv``
/ ``predictions.json``, whose ``"part"`` record holds

* ``part_id``, ``num_parts``;
* ``cases`` (this part's share) and ``all_cases`` (every case of the input folder, sorted) with
  ``all_cases_sha256``, so a merge can prove that nothing is missing and nothing overlaps;
* ``input_folder`` and ``clinical_table_sha256`` (the bytes of the clinical table used).

Together with the model provenance every part already records (trainer, plans, configuration,
folds, checkpoint and its SHA-256 per fold, inference settings, versions), this lets
``nnUNetv2_predict_multitask --merge PART_DIR [PART_DIR ...] -o OUT`` refuse parts of different
models or settings, of different case lists, repeated parts, overlapping or missing cases, before
it writes anything.

The merged ``predictions.csv`` is the parts' rows, as written (text, not re-parsed numbers),
sorted by case id: the same rows and values as a single run on all cases. The merged
``predictions.json`` is the parts' common provenance with ``n_cases`` of the whole set and a
``merged_from`` record instead of ``part``. The segmentations are **copied** into the merged
folder (with nnU-Net's ``dataset.json`` and ``plans.json``, and ``saliency/`` maps when the parts
have them), so the merged folder can be used as a single run's (``--seg-pred`` of the evaluation,
the report); the part folders stay as they were.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from os.path import isdir, isfile, join
from typing import Dict, Iterator, List, Optional, Sequence

import pandas as pd

from nnunet_multitask.checkpoints import file_sha256
from nnunet_multitask.prediction_artifact import (FAILURES_CSV, PATIENT_MAPPING_CSV, PREDICTIONS_CSV, PREDICTIONS_JSON,
                                                  MultitaskPredictionError, PartRecord, PredictionFormatError,
                                                  PredictionRecord, case_list_sha256)
from nnunet_multitask.publish import atomic_write, output_folder_lock, publish_files, staging_folder

PART_KEY = "part"
#: provenance entries that differ between runs of one model on the same settings (time, paths,
#: the part's own record); every other entry of predictions.json must agree between parts
PER_RUN_KEYS = ("created", "n_cases", "model_folder", "clinical_table", PART_KEY, "merged_from", "tables_sha256",
                "failed_cases", "complete")
SALIENCY_FOLDER = "saliency"


class PartMergeError(MultitaskPredictionError):
    """Part folders that cannot be merged into one run (different models, overlapping or missing
    cases or parts); the message names the folders and the problem."""


def part_share(cases: Sequence[str], part_id: int, num_parts: int) -> List[str]:
    """The cases part ``part_id`` of ``num_parts`` predicts: nnU-Net's ``sorted(cases)[part_id::num_parts]``."""
    check_part_arguments(part_id, num_parts, len(cases))
    return sorted(cases)[part_id::num_parts]


def check_part_arguments(part_id: int, num_parts: int, n_cases: Optional[int] = None) -> None:
    """``num_parts >= 1``, ``0 <= part_id < num_parts`` and, when known, no more parts than cases (an
    empty part would have no table to merge)."""
    if num_parts < 1:
        raise MultitaskPredictionError(f"-num_parts {num_parts}: must be at least 1")
    if not 0 <= part_id < num_parts:
        raise MultitaskPredictionError(f"-part_id {part_id}: must be between 0 and -num_parts - 1 = {num_parts - 1} "
                                       f"(parts are counted from 0, as in nnUNetv2_predict)")
    if n_cases is not None and num_parts > n_cases:
        raise MultitaskPredictionError(f"-num_parts {num_parts} is more than the {n_cases} case(s) of the input "
                                       f"folder: some parts would predict nothing; use at most {n_cases} parts")


def part_record(all_cases: Sequence[str], part_id: int, num_parts: int, input_folder: str,
                clinical_table_source: Optional[str]) -> PartRecord:
    """The ``"part"`` record of a part's ``predictions.json`` (module docstring)."""
    all_sorted = sorted(all_cases)
    clinical_sha = (file_sha256(clinical_table_source)
                    if clinical_table_source and isfile(clinical_table_source) else None)
    return PartRecord(part_id=int(part_id), num_parts=int(num_parts),
                      cases=tuple(part_share(all_sorted, part_id, num_parts)), all_cases=tuple(all_sorted),
                      all_cases_sha256=case_list_sha256(all_sorted), input_folder=os.path.abspath(input_folder),
                      clinical_table_sha256=clinical_sha)


@contextlib.contextmanager
def share_input_folder(input_folder: str, cases: Sequence[str], file_ending: str) -> Iterator[str]:
    """A temporary folder of symbolic links to the given cases' image files only.

    nnU-Net's sequential prediction path ignores ``part_id``/``num_parts``, so a part is predicted
    from a folder that holds exactly its share; both of nnU-Net's paths then predict the same cases,
    and every file of a case (whatever channels it has) comes along.
    """
    wanted = set(cases)
    pattern = re.compile(r"(.+)_\d{4}" + re.escape(file_ending))
    folder = tempfile.mkdtemp(prefix="nnunet_multitask_part_input_")
    try:
        for name in sorted(os.listdir(input_folder)):
            m = pattern.fullmatch(name)
            if m is not None and m.group(1) in wanted:
                os.symlink(os.path.abspath(join(input_folder, name)), join(folder, name))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def refuse_other_part_in_folder(output_folder: str, part_id: int, num_parts: int) -> None:
    """Parts share no output folder: refuse when ``output_folder`` already holds another part of
    the same split (``nnUNetv2_predict``'s parts may share one folder; ours each write a table)."""
    path = join(output_folder, PREDICTIONS_JSON)
    if not isfile(path):
        return
    try:
        with open(path) as f:
            existing = json.load(f).get(PART_KEY)
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(existing, dict) and existing.get("num_parts") == num_parts and existing.get("part_id") != part_id:
        raise MultitaskPredictionError(
            f"output folder {output_folder} already holds part {existing.get('part_id')} of {num_parts}: give each "
            f"part its own output folder (each writes its own partial predictions.csv), then merge them with "
            f"--merge PART_DIR [PART_DIR ...] -o OUT")


# ---------------------------------------------------------------------- merge
def _read_part(folder: str) -> dict:
    if not isdir(folder):
        raise PartMergeError(f"--merge: part folder not found: {folder}")
    for name in (PREDICTIONS_JSON, PREDICTIONS_CSV):
        if not isfile(join(folder, name)):
            raise PartMergeError(f"--merge: {folder} has no {name}: not the output of a finished "
                                 f"nnUNetv2_predict_multitask -num_parts run")
    try:
        with open(join(folder, PREDICTIONS_JSON)) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise PartMergeError(f"--merge: {join(folder, PREDICTIONS_JSON)} cannot be read: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(PART_KEY), dict):
        raise PartMergeError(f"--merge: {join(folder, PREDICTIONS_JSON)} has no '{PART_KEY}' record: {folder} is a "
                             f"complete run (or a merge), not one part of a -num_parts run; it needs no merging")
    try:
        record = PredictionRecord.from_dict(meta, source=join(folder, PREDICTIONS_JSON))
    except PredictionFormatError as e:
        raise PartMergeError(f"--merge: {e}") from None
    _check_table_digests(folder, record)
    try:
        # text as written: the merged file repeats the parts' values exactly
        table = pd.read_csv(join(folder, PREDICTIONS_CSV), dtype=str, keep_default_na=False)
        failures = (pd.read_csv(join(folder, FAILURES_CSV), dtype=str, keep_default_na=False)
                    if isfile(join(folder, FAILURES_CSV)) else pd.DataFrame({"case_id": [], "reason": []}))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PartMergeError(f"--merge: a table of {folder} cannot be read: {e}") from None
    if sorted(failures["case_id"]) != sorted(record.failed):
        raise PartMergeError(f"--merge: {join(folder, FAILURES_CSV)} does not list the failed cases "
                             f"{record.failed} that {join(folder, PREDICTIONS_JSON)} records")
    return {"folder": folder, "record": record, "part": record.part, "table": table, "failures": failures}


def _check_table_digests(folder: str, record: PredictionRecord) -> None:
    """Each table of a part must still have the SHA-256 its prediction recorded: a value edited
    afterwards would otherwise be carried into the merged table."""
    digests = record.tables_sha256
    if not isinstance(digests, dict) or PREDICTIONS_CSV not in digests:
        raise PartMergeError(f"--merge: {join(folder, PREDICTIONS_JSON)} records no SHA-256 of its tables (a part "
                             f"predicted before the digests were recorded): predict the part again")
    if isfile(join(folder, FAILURES_CSV)) and FAILURES_CSV not in digests:
        raise PartMergeError(f"--merge: {join(folder, FAILURES_CSV)} is not a table this part's prediction wrote")
    for name, expected in sorted(digests.items()):
        path = join(folder, name)
        if not isfile(path):
            raise PartMergeError(f"--merge: {path} is missing (its prediction wrote it)")
        if file_sha256(path) != expected:
            raise PartMergeError(f"--merge: {path} was changed after it was predicted (its SHA-256 differs from the "
                                 f"one recorded in {join(folder, PREDICTIONS_JSON)}): merge only unedited parts, or "
                                 f"predict the part again")


def _model_identity(record: PredictionRecord, part: PartRecord) -> dict:
    identity = record.identity(PER_RUN_KEYS)
    identity["clinical_table_sha256"] = part.clinical_table_sha256
    return identity


def check_parts(parts: List[dict]) -> List[str]:
    """Refuse parts that do not make one run; return every case, sorted.

    Checks, in order: one split (``num_parts``, the same full case list), one model and the same
    settings (every provenance entry but :data:`PER_RUN_KEYS`, plus the clinical table's bytes),
    each part once and every part present, each part's table holding exactly its share, no case
    in two parts, every case present.
    """
    first = parts[0]
    n = first["part"].num_parts
    for p in parts[1:]:
        if p["part"].num_parts != n:
            raise PartMergeError(f"--merge: {first['folder']} is a part of {n} but {p['folder']} a part of "
                                 f"{p['part'].num_parts}: parts of different splits")
        if p["part"].all_cases_sha256 != first["part"].all_cases_sha256:
            raise PartMergeError(f"--merge: {p['folder']} and {first['folder']} split different case lists "
                                 f"({len(p['part'].all_cases)} and {len(first['part'].all_cases)} cases): "
                                 f"parts of different input folders")
    reference = _model_identity(first["record"], first["part"])
    for p in parts[1:]:
        identity = _model_identity(p["record"], p["part"])
        differing = sorted(k for k in set(reference) | set(identity) if reference.get(k) != identity.get(k))
        if differing:
            detail = "; ".join(f"{k}: {reference.get(k)!r} vs {identity.get(k)!r}" for k in differing[:3])
            raise PartMergeError(f"--merge: {p['folder']} and {first['folder']} come from different models or "
                                 f"settings (differing {differing}: {detail}); parts of one run must share the "
                                 f"model, its checkpoints, the clinical table and the prediction settings")
    by_id: Dict[int, str] = {}
    for p in parts:
        k = p["part"].part_id
        if k in by_id:
            raise PartMergeError(f"--merge: part {k} of {n} given twice ({by_id[k]} and {p['folder']})")
        by_id[k] = p["folder"]
    absent = [k for k in range(n) if k not in by_id]
    if absent:
        raise PartMergeError(f"--merge: part(s) {absent} of {n} missing (given: parts {sorted(by_id)}): merge every "
                             f"part of the run")
    all_cases = list(first["part"].all_cases)
    owner: Dict[str, str] = {}
    for p in parts:
        cases = list(p["table"]["case_id"]) if "case_id" in p["table"].columns else []
        overlap = sorted(c for c in cases if c in owner)
        if overlap:
            raise PartMergeError(f"--merge: case(s) {overlap[:5]} are in both {owner[overlap[0]]} and {p['folder']}: "
                                 f"parts overlap")
        if len(set(cases)) != len(cases):
            raise PartMergeError(f"--merge: {join(p['folder'], PREDICTIONS_CSV)} repeats a case id")
        share = part_share(all_cases, p["part"].part_id, n)
        failed = list(p["failures"]["case_id"])
        if sorted(cases + failed) != share:
            missing = sorted(set(share) - set(cases) - set(failed))
            extra = sorted(set(cases) - set(share))
            raise PartMergeError(f"--merge: {join(p['folder'], PREDICTIONS_CSV)} (part {p['part'].part_id} of {n}) "
                                 f"does not hold its share of the cases (missing {missing[:5]}, not its own "
                                 f"{extra[:5]})")
        owner.update({c: p["folder"] for c in cases + failed})
        if list(p["table"].columns) != list(first["table"].columns):
            raise PartMergeError(f"--merge: {p['folder']} and {first['folder']} have different predictions.csv "
                                 f"columns")
    not_predicted = sorted(set(all_cases) - set(owner))
    if not_predicted:
        raise PartMergeError(f"--merge: case(s) {not_predicted[:5]} of the input folder are in no part")
    return sorted(all_cases)


def _segmentation_ending(folder: str) -> Optional[str]:
    path = join(folder, "dataset.json")
    if not isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("file_ending")


def _merged_copies(parts: List[dict]) -> List[tuple]:
    """(source, name in the merged folder) of every file a merge copies: the predicted cases'
    segmentations and saliency maps, nnU-Net's dataset.json and plans.json."""
    ending = _segmentation_ending(parts[0]["folder"])
    copies = []  # (source, name in the merged folder)
    for p in parts:
        if ending is not None:
            for c in p["table"]["case_id"]:
                src = join(p["folder"], c + ending)
                if not isfile(src):
                    raise PartMergeError(f"--merge: {p['folder']} lacks the segmentation {c + ending} of its case {c}")
                copies.append((src, c + ending))
        sal = join(p["folder"], SALIENCY_FOLDER)
        if isdir(sal):
            copies += [(join(sal, n), join(SALIENCY_FOLDER, n)) for n in sorted(os.listdir(sal))
                       if any(n.startswith(c + ".") for c in p["table"]["case_id"])]
    copies += [(join(parts[0]["folder"], n), n) for n in ("dataset.json", "plans.json")
               if isfile(join(parts[0]["folder"], n))]
    # new patients from a cohort folder: every part wrote the one mapping of case ids to patients
    mappings = [join(p["folder"], PATIENT_MAPPING_CSV) for p in parts if isfile(join(p["folder"], PATIENT_MAPPING_CSV))]
    if mappings:
        texts = {open(m, "rb").read() for m in mappings}
        if len(mappings) != len(parts) or len(texts) > 1:
            raise PartMergeError(f"--merge: the parts' {PATIENT_MAPPING_CSV} differ or are missing in some parts: "
                                 f"they were not prepared from one cohort folder, so a case id may name different "
                                 f"patients in different parts")
        copies.append((mappings[0], PATIENT_MAPPING_CSV))
    return copies


def merge_parts(part_folders: Sequence[str], output_folder: str) -> pd.DataFrame:
    """Merge the output folders of a ``-num_parts`` run into one run's output (module docstring).

    Parameters
    ----------
    part_folders : sequence of str
        Every part's output folder, in any order.
    output_folder : str
        Receives ``predictions.csv``, ``predictions.json``, the segmentations (copied),
        ``dataset.json``, ``plans.json`` and ``saliency/`` when present; all of them are staged and
        moved into place only after every check passed and every file was copied.

    Returns
    -------
    pandas.DataFrame
        The merged table (as text, the way it is written).

    Raises
    ------
    PartMergeError
        See :func:`check_parts`; also a part lacking a segmentation of one of its cases, a folder
        given twice, or an output folder that is one of the parts.
    """
    if not part_folders:
        raise PartMergeError("--merge: no part folder given")
    real = [os.path.realpath(f) for f in part_folders]
    for i, r in enumerate(real):
        if r in real[:i]:
            raise PartMergeError(f"--merge: {part_folders[i]} given twice")
    if os.path.realpath(output_folder) in real:
        raise PartMergeError(f"--merge: the output folder {output_folder} is one of the part folders; merge into "
                             f"a new folder")
    parts = sorted((_read_part(f) for f in part_folders), key=lambda p: p["part"].part_id)
    all_cases = check_parts(parts)
    copies = _merged_copies(parts)
    table = pd.concat([p["table"] for p in parts], ignore_index=True)
    predicted = [c for c in all_cases if c in set(table["case_id"])]
    table = table.set_index("case_id", drop=False).loc[predicted].reset_index(drop=True)
    first = parts[0]["record"]
    merged = replace(first, part=None, n_cases=len(table),
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     merged_from=tuple({"folder": os.path.abspath(p["folder"]), "part_id": p["part"].part_id,
                                        "num_parts": p["part"].num_parts, "n_cases": len(p["table"]),
                                        "created": p["record"].created, "model_folder": p["record"].model_folder,
                                        "input_folder": p["part"].input_folder} for p in parts),
                     merged_cases_sha256=parts[0]["part"].all_cases_sha256)
    failures = pd.concat([p["failures"] for p in parts], ignore_index=True).sort_values("case_id")
    table_text, failures_text = table.to_csv(index=False), failures.to_csv(index=False)
    digests = {PREDICTIONS_CSV: hashlib.sha256(table_text.encode()).hexdigest()}
    if not failures.empty:
        digests[FAILURES_CSV] = hashlib.sha256(failures_text.encode()).hexdigest()
    merged = replace(merged, failed_cases=tuple(failures["case_id"]), complete=failures.empty,
                     tables_sha256=digests)

    with output_folder_lock(output_folder), staging_folder(output_folder) as staging:
        for src, name in copies:
            os.makedirs(os.path.dirname(join(staging, name)), exist_ok=True)
            shutil.copy2(src, join(staging, name))
        if not failures.empty:
            atomic_write(join(staging, FAILURES_CSV), failures_text)
        elif isfile(join(output_folder, FAILURES_CSV)):
            os.remove(join(output_folder, FAILURES_CSV))
        atomic_write(join(staging, PREDICTIONS_JSON), merged.to_json())
        atomic_write(join(staging, PREDICTIONS_CSV), table_text)
        publish_files(staging, output_folder, last=(PREDICTIONS_JSON, PREDICTIONS_CSV))
    return table
