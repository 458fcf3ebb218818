"""Files a person opens: the reconstruction as an STL surface (3D Slicer) and an overview PNG of the defect."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shapeqc.transforms.volume_io import voxel_spacing


def _replace_atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    write(partial)
    os.replace(partial, path)
    return path


def write_stl(mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path | None:
    """Marching-cubes surface of ``mask`` in scanner mm (RAS+) as STL; None for an empty mask."""
    import trimesh
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    vertices, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
    vertices = (vertices - 1.0) @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return _replace_atomic(Path(path), lambda p: mesh.export(str(p), file_type="stl"))


def write_overview(segmentation: np.ndarray, reconstruction: np.ndarray, affine: np.ndarray,
                   centre_voxel: np.ndarray | None, path: str | os.PathLike, title: str = "") -> Path:
    """Three orthogonal slices through ``centre_voxel`` (the largest defect, else the organ centre) with the
    segmentation (cyan) and reconstruction (red) contours and the disagreement shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segmentation = np.asarray(segmentation, dtype=bool)
    reconstruction = np.asarray(reconstruction, dtype=bool)
    if centre_voxel is None:
        occupied = np.argwhere(segmentation | reconstruction)
        centre_voxel = occupied.mean(axis=0) if len(occupied) else np.array(segmentation.shape) / 2
    centre = np.clip(np.round(centre_voxel).astype(int), 0, np.array(segmentation.shape) - 1)
    spacing = voxel_spacing(affine)
    occupied = np.argwhere(segmentation | reconstruction)
    lower = np.maximum(occupied.min(axis=0) - 8, 0) if len(occupied) else np.zeros(3, int)
    upper = np.minimum(occupied.max(axis=0) + 9, segmentation.shape) if len(occupied) else np.array(segmentation.shape)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.3), dpi=90)
    for axis_index, axis in enumerate(axes):
        others = [a for a in range(3) if a != axis_index]
        cut = [slice(lower[a], upper[a]) for a in range(3)]
        cut[axis_index] = centre[axis_index]
        seg, rec = segmentation[tuple(cut)], reconstruction[tuple(cut)]
        shown = np.zeros(seg.shape + (3,))
        shown[seg & ~rec] = (0.9, 0.6, 0.0)
        shown[rec & ~seg] = (0.6, 0.0, 0.9)
        shown[seg & rec] = (0.35, 0.35, 0.35)
        aspect = spacing[others[0]] / spacing[others[1]]
        axis.imshow(np.transpose(shown, (1, 0, 2)), origin="lower", aspect=1 / aspect if aspect else 1,
                    interpolation="nearest")
        for mask, colour in ((seg, "cyan"), (rec, "red")):
            if mask.any() and not mask.all():
                axis.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        axis.set_title(f"axis {axis_index} = {centre[axis_index]}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title + "  (cyan: segmentation, red: reconstruction; orange: only segmented, "
                    "purple: only reconstructed)", fontsize=7)
    figure.tight_layout()
    result = _replace_atomic(Path(path), lambda p: figure.savefig(str(p), format="png"))
    plt.close(figure)
    return result
