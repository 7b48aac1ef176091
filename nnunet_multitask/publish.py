"""Lock, stage and publish: how the prediction side writes into an output folder, all-or-nothing.

* :func:`output_folder_lock`: one run writes into an output folder at a time (``flock``, released
  by the kernel when the process dies); staging folders of killed runs are removed under it.
* :func:`staging_folder`: a hidden folder inside the output folder (:data:`STAGING_PREFIX`), removed
  on the way out whatever happens; a killed process leaves it for the next lock holder to remove.
* :func:`publish_files` (a run's or a merge's files, ``predictions.csv`` last) and
  :func:`publish_folder` (a whole subfolder: ``report/``, ``saliency/``, ``dicom/``) move the staged
  results into place; :func:`atomic_write` writes one file.

Used by the prediction run, the merge of parts, the report, the saliency maps and the DICOM export.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from os.path import isdir, isfile, join
from typing import Dict, Iterator, Sequence

from nnunet_multitask.prediction_artifact import MultitaskPredictionError

#: Prefix of every hidden staging folder inside an output folder.
STAGING_PREFIX = ".nnunet_multitask_partial_"
#: The staging folder of a prediction run; a killed run leaves it for ``--continue``.
RUN_STAGING = STAGING_PREFIX + "run"
#: Held (flock) by the run writing into an output folder; removed when the run ends.
LOCK_NAME = ".nnunet_multitask.lock"
#: output folders (real paths) whose lock this process holds: the lock is re-entrant within a process
_held_locks: Dict[str, int] = {}


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_output_folder(output_folder: str) -> None:
    """Create the folder if needed and prove it is writable."""
    try:
        os.makedirs(output_folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_folder, prefix=".write_test_")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise MultitaskPredictionError(f"output folder {output_folder} cannot be written: {e}") from None


def remove_stale_staging(output_folder: str, keep_run: bool = False) -> None:
    """Remove staging folders left by a run that was killed; only called with the folder's lock
    held, so no live run owns them. ``keep_run``: keep the killed run's own staging folder
    (:data:`RUN_STAGING`), which ``--continue`` picks up."""
    for name in sorted(os.listdir(output_folder)):
        path = join(output_folder, name)
        if keep_run and name == RUN_STAGING:
            continue
        if name.startswith(STAGING_PREFIX) and isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            print(f"nnUNetv2_predict_multitask: note: removed {path}, the hidden staging folder of an earlier "
                  f"prediction into this folder that was interrupted before it finished (its partial results were "
                  f"never moved into place{'; --continue would have resumed it' if name == RUN_STAGING else ''})",
                  file=sys.stderr)
        elif name.startswith(".write_test_") and isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)


def _take_flock(output_folder: str, path: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MultitaskPredictionError(f"output folder {output_folder} cannot be written: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 500).decode(errors="replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise MultitaskPredictionError(
                f"output folder {output_folder}: another nnUNetv2_predict_multitask run ({holder}) is writing into "
                f"it now ({path} is locked); wait for it to finish or use another output folder: two runs into "
                f"one folder would interleave their files") from None
        try:  # a run finishing in between may have removed the file we locked: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_folder_lock(output_folder: str, resume: bool = False) -> Iterator[None]:
    """Hold the output folder for one prediction run (or merge).

    Creates the folder if needed (and removes it again if it is left empty), takes an exclusive
    ``flock`` on ``<output>/.nnunet_multitask.lock`` (released by the kernel if the process is
    killed), refuses when another run holds it, and removes staging folders of killed runs (with
    ``resume``, all but the run's own, which ``--continue`` picks up).
    Re-entrant within one process (the CLI holds it around model loading and the prediction).
    """
    key = os.path.realpath(output_folder)
    if key in _held_locks:
        yield
        return
    created = not isdir(output_folder)
    check_output_folder(output_folder)
    path = join(output_folder, LOCK_NAME)
    fd = _take_flock(output_folder, path)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}, started "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode())
    _held_locks[key] = fd
    try:
        remove_stale_staging(output_folder, keep_run=resume)
        yield
    finally:
        del _held_locks[key]
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output_folder)  # only succeeds when nothing was written


def new_staging_folder(output_folder: str, kind: str = "") -> str:
    """A new hidden staging folder inside ``output_folder`` (the caller removes it)."""
    return tempfile.mkdtemp(prefix=STAGING_PREFIX + kind, dir=output_folder)


@contextlib.contextmanager
def staging_folder(output_folder: str, kind: str = "") -> Iterator[str]:
    """A hidden staging folder inside ``output_folder``, removed on the way out (what was published
    from it is gone from it by then)."""
    staging = new_staging_folder(output_folder, kind)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_files(staging: str, output_folder: str, last: Sequence[str] = ()) -> None:
    """Move every entry of ``staging`` into ``output_folder`` (a folder replaces a folder of the same
    name), the names in ``last`` last and in that order."""
    names = [n for n in sorted(os.listdir(staging)) if n not in last] + [n for n in last
                                                                       if os.path.lexists(join(staging, n))]
    for name in names:
        target = join(output_folder, name)
        if isdir(join(staging, name)) and isdir(target):
            shutil.rmtree(target)
        os.replace(join(staging, name), target)


def publish_folder(staging: str, target: str) -> None:
    """Move a complete staging folder into place, readable as any new folder (``mkdtemp`` creates it
    for its owner only). An existing ``target`` is renamed aside first and removed only once the new
    folder is in place (put back if that rename fails), so a failure never leaves neither. The one
    folder swap of the project: prediction outputs, the converter's dataset, the synthetic cohorts."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    old = join(os.path.dirname(os.path.abspath(target)), f".old_{os.path.basename(target)}_{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    if isdir(old):
        shutil.rmtree(old)
    else:
        os.remove(old)
