"""A tiny cohort writer for tests: the hospital-export layout with small, controllable images.

Unlike the synthetic generator (realistic anatomy and outcomes), every property here is chosen
by the test: grids, centres, events, voxel values. Diffusion maps live on their own coarser grid
whose field of view covers the T2 field of view with a margin, as a real DWI series would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import pandas as pd
import SimpleITK as sitk

T2_SPACING = (0.7, 0.7, 3.0)
DIFFUSION_SPACING = (1.6, 1.6, 4.5)
T2_ORIGIN = (-10.0, 5.0, 20.0)


def write_image(array_zyx: np.ndarray, path: Path, spacing, origin, direction=None,
                notes: str = "") -> sitk.Image:
    """Write a numpy array (z, y, x order, as SimpleITK returns it) with the given geometry.

    ``notes`` goes into the NIfTI ``descrip`` header field, as scanner exports often carry a
    patient name or id there.
    """
    image = sitk.GetImageFromArray(array_zyx)
    if notes:
        image.SetMetaData("ITK_FileNotes", notes)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return image


def diffusion_grid(t2_shape_xyz: Sequence[int], t2_spacing=T2_SPACING, t2_origin=T2_ORIGIN,
                   spacing=DIFFUSION_SPACING, margin_voxels: int = 1,
                   flip_x: bool = False) -> Tuple[Tuple[int, ...], Tuple[float, ...], Tuple[float, ...]]:
    """Size, origin and direction of a diffusion grid covering the (identity-direction) T2 box.

    ``flip_x`` gives the diffusion grid a direction with the x axis reversed (origin at the
    other end), so only a resampler working in physical space maps it correctly.
    """
    t2_spacing, t2_origin, spacing = map(np.asarray, (t2_spacing, t2_origin, spacing))
    box_min = t2_origin - 0.5 * t2_spacing
    box_max = t2_origin + (np.asarray(t2_shape_xyz) - 0.5) * t2_spacing
    size = np.ceil((box_max - box_min) / spacing).astype(int) + 2 * margin_voxels
    origin = box_min - (margin_voxels - 0.5) * spacing
    direction = np.eye(3)
    if flip_x:
        direction[0, 0] = -1.0
        origin[0] = origin[0] + (size[0] - 1) * spacing[0]
    return tuple(int(s) for s in size), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def physical_points(size_xyz, spacing, origin, direction) -> np.ndarray:
    """Physical coordinates of every voxel centre, shape (z, y, x, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size_xyz)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)[None, :]
    return index @ matrix.T + np.asarray(origin)


def clinical_row(rng: np.random.Generator, patient_id: str, centre: str, event: int) -> dict:
    """One table row with every column of clinical/larc_schema.json, a few values missing."""
    return {
        "patient_id": patient_id, "centre": centre,
        "age": round(float(rng.uniform(35, 80)), 1), "sex": rng.choice(["F", "M"]),
        "cea": round(float(rng.uniform(0.5, 20)), 2) if rng.random() > 0.2 else None,
        "ct": rng.choice(["T2", "T3", "T4"]), "cn": rng.choice(["N0", "N1", "N2"]),
        "mrf": int(rng.integers(0, 2)), "emvi": int(rng.integers(0, 2)) if rng.random() > 0.2 else None,
        "distance_av_cm": round(float(rng.uniform(2, 12)), 1),
        "ypt": rng.choice(["T0", "T1", "T2", "T3", "T4"]), "ypn": rng.choice(["N0", "N1", "N2"]),
        "trg": rng.choice(["0", "1", "2", "3"]),
        "dfs_months": round(float(rng.uniform(4, 70)), 1), "dfs_event": event,
    }


def write_cohort(root: Path, n_patients: int = 10, centres: Sequence[str] = ("1", "2", "3"),
                 t2_shape_xyz: Sequence[int] = (20, 18, 6), seed: int = 0, id_prefix: str = "HX",
                 flip_diffusion_x: bool = False) -> pd.DataFrame:
    """Write a cohort folder with ``n_patients`` patients and return its clinical table.

    Patient ``i`` (0-based) gets id ``f"{id_prefix}{i + 1:03d}"``, centre ``centres[i % len]``
    and an event for every other patient. T2 holds a smooth ramp, the diffusion maps a different
    smooth function of physical position, and the mask a small box near the T2 centre.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    t2_shape_xyz = tuple(int(n) for n in t2_shape_xyz)
    d_size, d_origin, d_direction = diffusion_grid(t2_shape_xyz, flip_x=flip_diffusion_x)
    d_points = physical_points(d_size, DIFFUSION_SPACING, d_origin, d_direction)
    rows = []
    for i in range(n_patients):
        patient_id = f"{id_prefix}{i + 1:03d}"
        folder = root / "images" / patient_id
        nz, ny, nx = t2_shape_xyz[2], t2_shape_xyz[1], t2_shape_xyz[0]
        t2 = (np.arange(nx)[None, None, :] + 2.0 * np.arange(ny)[None, :, None] + 5.0 * np.arange(nz)[:, None, None]
              + 100.0 * (i + 1)).astype(np.float32)
        write_image(t2, folder / "T2.nii.gz", T2_SPACING, T2_ORIGIN, notes=patient_id)
        for scale, series in ((1000.0, "ADC"), (1500.0, "Dapp"), (1.0, "Kapp")):
            values = scale * (1.0 + 0.01 * d_points[..., 0] + 0.02 * d_points[..., 1] - 0.005 * d_points[..., 2])
            write_image(values.astype(np.float32), folder / f"{series}.nii.gz", DIFFUSION_SPACING, d_origin,
                        d_direction, notes=patient_id)
        mask = np.zeros((nz, ny, nx), np.uint8)
        mask[nz // 2 - 1: nz // 2 + 1, ny // 2 - 2: ny // 2 + 2, nx // 2 - 3: nx // 2 + 3] = 1
        write_image(mask, folder / "mask.nii.gz", T2_SPACING, T2_ORIGIN, notes=patient_id)
        rows.append(clinical_row(rng, patient_id, centres[i % len(centres)], i % 2))
    table = pd.DataFrame(rows)
    table["mrf"] = table["mrf"].astype("Int64")
    table["emvi"] = table["emvi"].astype("Int64")
    table.to_csv(root / "clinical.csv", index=False)
    return table


def t2_centre_mm(t2_shape_xyz: Sequence[int]) -> np.ndarray:
    """Physical centre of the factory's T2 volume."""
    return np.asarray(T2_ORIGIN) + (np.asarray(t2_shape_xyz) - 1) / 2.0 * np.asarray(T2_SPACING)


__all__ = ["write_cohort", "write_image", "diffusion_grid", "physical_points", "t2_centre_mm",
           "T2_SPACING", "T2_ORIGIN", "DIFFUSION_SPACING", "clinical_row"]
