"""Read a NIfTI file completely, or say why it is incomplete.

SimpleITK (ITK) reads a ``.nii.gz`` whose gzip stream was cut short (an interrupted copy or
export) without complaint and fills the missing voxels with zeros; nibabel reads the header
lazily. :func:`read_nifti_completely` decompresses the whole file once, checks that the gzip
stream ends properly and that it holds every voxel the header promises
(``vox_offset + prod(dim) * bytes per voxel``), and returns the image built from those bytes,
so a caller can look at its voxels without reading the file again.

Used by the converter (``dataset_conversion.convert_larc``) and by the predictor's input
checks (``nnunet_multitask.predictor``).
"""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel

__all__ = ["IncompleteImageError", "read_nifti_completely", "is_nifti"]

_HEADER_CLASSES = {348: (nibabel.Nifti1Header, nibabel.Nifti1Image),
                   540: (nibabel.Nifti2Header, nibabel.Nifti2Image)}


class IncompleteImageError(ValueError):
    """The file is cut short or its compressed stream is damaged; the message says how."""


def is_nifti(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def _header_class(raw: bytes):
    if len(raw) < 4:
        return None
    for order in ("little", "big"):
        size = int.from_bytes(raw[:4], order)
        if size in _HEADER_CLASSES:
            return _HEADER_CLASSES[size]
    return None


def read_nifti_completely(path):
    """Decompress and check a ``.nii`` / ``.nii.gz`` file, reading it once.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    nibabel.Nifti1Image or nibabel.Nifti2Image
        The image held in memory (``np.asanyarray(image.dataobj)`` gives the stored voxels,
        scaled by the header's slope and intercept).

    Raises
    ------
    IncompleteImageError
        The gzip stream ends early or is corrupt, the file is not a single-file NIfTI-1/2 image,
        or it holds fewer bytes than its header promises. The message gives the reason (without
        the path, which the caller adds with the patient or case).
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except EOFError:
        raise IncompleteImageError("the file is cut short (its gzip stream ends before the end-of-stream "
                                   "marker: an interrupted copy or export?)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IncompleteImageError(f"the gzip stream is damaged ({e})") from None
    except OSError as e:
        raise IncompleteImageError(f"cannot be read completely ({e})") from None
    classes = _header_class(raw)
    if classes is None:
        raise IncompleteImageError("not a single-file NIfTI-1/2 image (no valid header size at its start)")
    header_class, image_class = classes
    try:
        header = header_class.from_fileobj(io.BytesIO(raw), check=False)
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except Exception as e:  # nibabel raises several types for a malformed header
        raise IncompleteImageError(f"its NIfTI header cannot be parsed ({type(e).__name__}: {e})") from None
    n_voxels = 1
    for n in shape:
        n_voxels *= int(n)
    expected = offset + n_voxels * itemsize
    if len(raw) < expected:
        present = max(0, len(raw) - offset) / max(1, n_voxels * itemsize)
        raise IncompleteImageError(
            f"the file is cut short: it holds {len(raw)} bytes (decompressed) but its header "
            f"(shape {tuple(int(n) for n in shape)}, {itemsize} byte(s) per voxel, data at byte {offset}) "
            f"promises {expected}; only {present:.0%} of the voxel data is present (an interrupted copy or "
            f"export?)")
    try:
        return image_class.from_bytes(raw)
    except Exception as e:
        raise IncompleteImageError(f"cannot be parsed as NIfTI ({type(e).__name__}: {e})") from None
