"""Read a NIfTI file completely, or say why it is incomplete.

SimpleITK (ITK) reads a ``.nii.gz`` whose gzip stream was cut short (an interrupted copy or
export) without complaint and fills the missing voxels with zeros; nibabel reads the header
lazily. :func:`read_nifti_completely` decompresses the whole file once, checks that the gzip
stream ends properly and that it holds every voxel the header promises
(``vox_offset + prod(dim) * bytes per voxel``), and returns the image built from those bytes,
so a caller can look at its voxels without reading the file again.

:func:`check_nifti_size` is the cheap form of the same promise check, for a caller that does not
need the voxels: it reads the header, then compares the promised size with the file size
(``.nii``) or with the decompressed stream, decompressed in chunks and never past the promised
size (``.nii.gz``), so memory stays constant. Call it (or :func:`read_nifti_completely`) before
ITK reads a file: ITK allocates the whole image the header declares (a header declaring
10000 x 10000 x 10000 voxels in a file of a few hundred bytes makes it try to allocate terabytes).

:func:`itk_error_reason` turns a SimpleITK ``RuntimeError`` into ITK's own reason (its message
otherwise starts with a C++ source location). :func:`check_nifti_geometry` refuses stored header
fields ITK would silently replace (a voxel size of 0 or NaN read as 1 mm, a negative one folded
into the direction, a NaN sform/qform). :func:`find_series_files` lists the files of one series (or
one case and channel) under every image ending and capitalisation: more than one is ambiguous.

Used by the converter (``dataset_conversion.convert_larc``) and by the predictor's input
checks (``nnunet_multitask.predictor``).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Tuple

import nibabel

from clinical.errors import MultitaskError

__all__ = ["IncompleteImageError", "read_nifti_completely", "check_nifti_size", "itk_error_reason", "is_nifti",
           "check_nifti_geometry", "IMAGE_ENDINGS", "split_image_name", "find_series_files"]

#: Endings of an image file, compared in lower case (longest first where one ends another). Two files of one
#: series (or one case and channel) whose names differ only in these endings or in capitalisation are
#: ambiguous: ITK's NIfTI reader asked for ``T2.nii.gz`` reads ``T2.nii`` when both exist.
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hdr.gz", ".hdr", ".img.gz", ".img",
                 ".gipl.gz", ".gipl", ".vtk", ".dcm")

#: Bytes decompressed at a time by :func:`check_nifti_size`.
_CHUNK = 1 << 20
#: Bytes read to find and parse the header (NIfTI-2's header is 540 bytes, NIfTI-1's 348).
_MAX_HEADER = 540

_HEADER_CLASSES = {348: (nibabel.Nifti1Header, nibabel.Nifti1Image),
                   540: (nibabel.Nifti2Header, nibabel.Nifti2Image)}


class IncompleteImageError(MultitaskError, ValueError):
    """The file is cut short, its compressed stream is damaged, or its header is malformed or promises
    what the file does not hold; the message says how."""


def is_nifti(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def split_image_name(name: str):
    """``(stem, ending)`` of an image file name (the ending as written, matched case-insensitively
    against :data:`IMAGE_ENDINGS`), or None when the name has none of them (``T2.json``, ``notes.txt``)."""
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[:-len(ending)], name[-len(ending):]
    return None


def find_series_files(folder, stem: str, names=None) -> list:
    """Every image file in ``folder`` whose stem equals ``stem`` ignoring case, whatever its image ending.

    More than one means two files for one series (``T2.nii`` beside ``T2.nii.gz``, ``t2.nii.gz`` beside
    ``T2.nii.gz``, ``case_0000.nii`` beside ``case_0000.nii.gz``): the caller should refuse, naming
    them, since a reader may take another file than the one that was checked.

    Parameters
    ----------
    folder : str or Path
    stem : str
        The name without its ending (``"T2"``, ``"LARC_0001_0000"``).
    names : iterable of str, optional
        The folder's file names, when the caller already listed it (a folder of thousands of cases is
        then listed once, not once per case); otherwise the folder is listed here.

    Returns
    -------
    list of Path
        Sorted by name; only regular files (or links to them) when the folder is listed here.
    """
    folder = Path(folder)
    if names is None:
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if p.is_file()]
    wanted = stem.lower()
    return [folder / n for n in sorted(names) if (split := split_image_name(n)) and split[0].lower() == wanted]


def _header_kind(raw: bytes):
    """(header class, image class, header size, byte order) from the ``sizeof_hdr`` field, or None."""
    if len(raw) < 4:
        return None
    for order in ("little", "big"):
        size = int.from_bytes(raw[:4], order)
        if size in _HEADER_CLASSES:
            return (*_HEADER_CLASSES[size], size, order)
    return None


# header size -> (offset of dim[8], struct format of one dim entry, offset of datatype)
_RAW_LAYOUT = {348: (40, "h", 70), 540: (16, "q", 12)}


def _check_raw_fields(raw: bytes, size: int, order: str) -> None:
    """The fields nibabel needs to describe the data, read in the byte order ``sizeof_hdr`` gave, so a
    malformed header is named plainly (nibabel would guess another byte order, or raise a bare KeyError)."""
    endian = "<" if order == "little" else ">"
    dim_offset, dim_format, datatype_offset = _RAW_LAYOUT[size]
    dims = struct.unpack_from(f"{endian}8{dim_format}", raw, dim_offset)
    datatype = struct.unpack_from(f"{endian}h", raw, datatype_offset)[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise IncompleteImageError(f"its NIfTI header declares dim[0] = {ndim} dimensions (1 to 7 are valid): "
                                   f"not a valid NIfTI header")
    shape = tuple(int(n) for n in dims[1:ndim + 1])
    if any(n < 0 for n in shape):
        raise IncompleteImageError(f"its NIfTI header declares a negative size (shape {shape})")
    if any(n == 0 for n in shape):
        raise IncompleteImageError(f"its NIfTI header declares no voxels (shape {shape}: a size of 0)")
    if datatype not in nibabel.nifti1.data_type_codes.value_set("code"):
        raise IncompleteImageError(f"its NIfTI header declares an unknown datatype code {datatype}")


@contextlib.contextmanager
def _stream_errors(unreadable: str):
    """Reading errors of a (gzipped) file as :class:`IncompleteImageError` with the reason."""
    try:
        yield
    except EOFError:
        raise IncompleteImageError("the file is cut short (its gzip stream ends before the end-of-stream "
                                   "marker: an interrupted copy or export?)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IncompleteImageError(f"the gzip stream is damaged ({e})") from None
    except OSError as e:
        raise IncompleteImageError(f"{unreadable} ({e})") from None


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
    with _stream_errors("cannot be read completely"):
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    header_class, image_class, expected, promise = _parse_header(raw)
    if len(raw) < expected:
        raise IncompleteImageError(_cut_short_message(len(raw), expected, promise, path.name.endswith(".gz")))
    try:
        return image_class.from_bytes(raw)
    except Exception as e:
        raise IncompleteImageError(f"cannot be parsed as NIfTI ({type(e).__name__}: {e})") from None


def _parse_header(raw: bytes) -> Tuple[type, type, int, Tuple[tuple, int, int]]:
    """Header class, image class, promised file size and (shape, bytes per voxel, data offset)
    from the first bytes of a (decompressed) NIfTI file."""
    kind = _header_kind(raw)
    if kind is None:
        raise IncompleteImageError("not a single-file NIfTI-1/2 image (no valid header size at its start)")
    header_class, image_class, size, order = kind  # size 348 (NIfTI-1) or 540 (NIfTI-2)
    if len(raw) < size:
        raise IncompleteImageError(f"the file is cut short: it holds {len(raw)} bytes, fewer than its "
                                   f"{size}-byte NIfTI header")
    _check_raw_fields(raw, size, order)
    try:
        # only the fixed header (and an empty extension flag): the promise does not depend on extensions
        header = header_class.from_fileobj(io.BytesIO(raw[:size] + b"\0\0\0\0"), check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = header.get_data_dtype().itemsize
        # a single-file image's data never starts inside its header (nibabel reads an unset 0 as 352)
        offset = max(int(header.get_data_offset()), int(header.single_vox_offset))
    except Exception as e:  # nibabel raises several types for a malformed header
        raise IncompleteImageError(f"its NIfTI header cannot be parsed ({type(e).__name__}: {e})") from None
    if any(n < 0 for n in shape) or offset < 0:
        raise IncompleteImageError(f"its NIfTI header declares a negative size (shape {shape}, data at byte "
                                   f"{offset})")
    if itemsize == 0:
        raise IncompleteImageError(f"its NIfTI header declares datatype code {int(header['datatype'])}, which "
                                   f"holds no voxel values")
    n_voxels = 1
    for n in shape:
        n_voxels *= n
    return header_class, image_class, offset + n_voxels * itemsize, (shape, itemsize, offset)


def _cut_short_message(actual: int, expected: int, promise: Tuple[tuple, int, int], decompressed: bool) -> str:
    shape, itemsize, offset = promise
    data_bytes = max(1, expected - offset)
    present = max(0, actual - offset) / data_bytes
    share = f"only {present:.0%} of the voxel data is present" if present >= 0.01 else \
        f"less than 1% of the voxel data is present ({max(0, actual - offset)} of {data_bytes} bytes)"
    hint = "an interrupted copy or export?" if present >= 0.01 else \
        "an interrupted copy, or a header that does not describe this file's data?"
    return (f"the file is cut short: it holds {actual} bytes{' (decompressed)' if decompressed else ''} but its "
            f"header (shape {shape}, {itemsize} byte(s) per voxel, data at byte {offset}) promises {expected}; "
            f"{share} ({hint})")


def check_nifti_size(path) -> int:
    """Compare the size a NIfTI header promises with the bytes the file holds, without reading its voxels.

    Cheap and in constant memory: the header is parsed from the first bytes; a ``.nii`` is then
    compared with its size on disk, a ``.nii.gz`` is decompressed in chunks of 1 MiB that are
    counted and dropped, stopping as soon as the promised size is reached (so never further than
    the header promises, and never further than the stream really holds). Call it before an
    image reader that allocates what the header declares (ITK) reads the file.

    It does not check that a gzip stream that holds enough bytes also ends properly; for that
    (and for the voxels) use :func:`read_nifti_completely`.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    int
        The size in bytes the header promises: ``vox_offset + prod(dim) * bytes per voxel``
        (decompressed, for ``.nii.gz``).

    Raises
    ------
    IncompleteImageError
        The file is not a single-file NIfTI-1/2 image, its header cannot be parsed, its gzip stream
        is damaged or ends early, or it holds fewer bytes than its header promises (the message gives
        the shape, the bytes per voxel, the promised and the actual size; without the path, which
        the caller adds with the patient or case).
    """
    path = Path(path)
    compressed = path.name.endswith(".gz")
    with _stream_errors("cannot be read"):
        if not compressed:
            with open(path, "rb") as f:
                head = f.read(_MAX_HEADER)
            _, _, expected, promise = _parse_header(head)
            actual = os.path.getsize(path)
        else:
            with gzip.open(path, "rb") as f:
                head = f.read(_MAX_HEADER)
                _, _, expected, promise = _parse_header(head)
                actual = len(head)
                while actual < expected:
                    chunk = f.read(min(_CHUNK, expected - actual))
                    if not chunk:
                        break
                    actual += len(chunk)
    if actual < expected:
        raise IncompleteImageError(_cut_short_message(actual, expected, promise, compressed))
    return expected


def check_nifti_geometry(path) -> None:
    """Refuse a NIfTI header whose geometry ITK would silently replace or cannot use.

    ITK reads a voxel size (``pixdim[1..3]``) of 0 or NaN as 1 and folds a negative one into the
    direction; a NaN or infinite ``sform`` / ``qform`` gives a non-finite origin or direction. Every
    spatial voxel size must be finite and > 0, and the affine of every orientation the header
    declares (``sform_code`` / ``qform_code`` > 0) finite. (A sheared or degenerate but finite
    affine is left to ITK, which refuses it; :func:`itk_error_reason` keeps its reason.)

    Only the header is read (the first bytes of the file, decompressed), as stored: nibabel's image
    loading "fixes" a zero or negative voxel size silently, as ITK does, so an image from
    :func:`read_nifti_completely` cannot show it.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.

    Raises
    ------
    IncompleteImageError
        Naming the field and its values (without the path, which the caller adds); also when the
        header cannot be read (as :func:`check_nifti_size`).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(_MAX_HEADER)
    except EOFError:
        raise IncompleteImageError("the file is cut short (its gzip stream ends inside the header)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IncompleteImageError(f"the gzip stream is damaged ({e})") from None
    except OSError as e:
        raise IncompleteImageError(f"cannot be read ({e})") from None
    _parse_header(head)  # a readable header that describes voxel data (raises otherwise)
    header_class, _, size, _ = _header_kind(head)
    header = header_class.from_fileobj(io.BytesIO(head[:size] + b"\0\0\0\0"), check=False)
    ndim = int(header["dim"][0])
    spacing = [float(v) for v in header["pixdim"][1:1 + min(3, ndim)]]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise IncompleteImageError(f"its NIfTI header's voxel size pixdim[1..{len(spacing)}] = "
                                   f"({', '.join(f'{v:g}' for v in spacing)}) is not finite and > 0 (ITK would read 0 "
                                   f"or NaN as 1 mm and fold a negative size into the direction): repair the header or "
                                   f"re-export")
    checks = []
    if int(header["sform_code"]) > 0:
        checks.append(("sform", [*header["srow_x"], *header["srow_y"], *header["srow_z"]]))
    if int(header["qform_code"]) > 0:
        checks.append(("qform", [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                                                            "qoffset_y", "qoffset_z")]))
    for name, values in checks:
        if not all(math.isfinite(float(v)) for v in values):
            raise IncompleteImageError(f"its NIfTI header's {name} holds a NaN or infinite value "
                                       f"({', '.join(f'{float(v):g}' for v in values)}): its origin or "
                                       f"direction is undefined")


_ITK_PREFIX = re.compile(r"^(?:ITK ERROR|sitk::ERROR|ERROR)\s*:\s*(?:[A-Za-z_][\w:]*\(0x[0-9a-fA-F]+\)\s*:\s*)?")
_SOURCE_LOCATION = re.compile(r"\.(?:cxx|hxx|cpp|h|txx)(?::\d+)+:?\s*$")


def itk_error_reason(error: BaseException) -> str:
    """ITK's own reason from a SimpleITK ``RuntimeError`` (its message starts with a source location).

    SimpleITK's message reads ``Exception thrown in SimpleITK ImageFileReader_Execute:
    /.../itkNiftiImageIO.cxx:2135:`` then, on the next line(s), ``ITK ERROR: ITK only supports
    orthonormal direction cosines.  No orthonormal definition found!``. This returns the text after
    the ``ITK ERROR:`` / ``sitk::ERROR:`` marker (and an object address such as
    ``ImageFileReader(0x55d0...):``), its lines joined, whitespace collapsed; without a marker,
    the last line that is not a source location; the exception's type name if nothing is left.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = _ITK_PREFIX.match(line)
        if match:
            reason = " ".join([line[match.end():], *lines[i + 1:]])
            reason = re.sub(r"\s+", " ", reason).strip()
            if reason:
                return reason
    for line in reversed(lines):
        if not _SOURCE_LOCATION.search(line):
            return re.sub(r"\s+", " ", line)
    return type(error).__name__
