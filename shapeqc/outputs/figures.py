"""Files a person opens: the reconstruction as an STL surface (3D Slicer) and an overview PNG of the defect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from shapeqc.scoring.metrics import occupied_box
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
                   centre_voxel: np.ndarray | None, path: str | os.PathLike, title: str = "",
                   image: np.ndarray | None = None, window: tuple[float, float] | None = None) -> Path:
    """Three orthogonal slices through ``centre_voxel`` (the largest defect, else the organ centre), drawn in mm
    (a 2.5 mm slice is 2.5 mm tall), with the image the segmentation was drawn on underneath when given
    (``image`` (D, H, W) on the segmentation's grid, shown in ``window`` (low, high)), the segmentation (cyan) and
    reconstruction (red) as contours, the disagreement filled (orange: only segmented, purple: only
    reconstructed) and a 10 mm scale bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segmentation = np.asarray(segmentation, dtype=bool)
    reconstruction = np.asarray(reconstruction, dtype=bool)
    empty = not (segmentation.any() or reconstruction.any())
    if centre_voxel is None:
        centre_voxel = (np.array(segmentation.shape) / 2 if empty
                        else np.argwhere(segmentation | reconstruction).mean(axis=0))
    centre = np.clip(np.round(centre_voxel).astype(int), 0, np.array(segmentation.shape) - 1)
    spacing = voxel_spacing(affine)
    # room around the organ: 15 mm, so the image shows what the organ borders on
    margin = np.ceil(15.0 / np.asarray(spacing)).astype(int)
    box = (tuple(slice(0, n) for n in segmentation.shape) if empty
           else occupied_box(segmentation, reconstruction, margin=margin))
    lower, upper = [b.start for b in box], [b.stop for b in box]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.8), dpi=100)
    for axis_index, axis in enumerate(axes):
        others = [a for a in range(3) if a != axis_index]
        cut = [slice(lower[a], upper[a]) for a in range(3)]
        cut[axis_index] = centre[axis_index]
        seg, rec = segmentation[tuple(cut)], reconstruction[tuple(cut)]
        # rows: the second remaining axis (upwards), columns: the first; extent in mm keeps the true aspect
        extent = (0.0, seg.shape[0] * spacing[others[0]], 0.0, seg.shape[1] * spacing[others[1]])
        if image is not None:
            low, high = window or (float(image.min()), float(image.max()))
            axis.imshow(image[tuple(cut)].T, origin="lower", extent=extent, cmap="gray", vmin=low, vmax=high,
                        interpolation="nearest")
        else:
            axis.imshow(np.zeros(seg.T.shape), origin="lower", extent=extent, cmap="gray", vmin=0, vmax=1)
        filled = np.zeros(seg.shape + (4,))
        filled[seg & ~rec] = (1.0, 0.6, 0.0, 0.75)
        filled[rec & ~seg] = (0.7, 0.2, 1.0, 0.75)
        axis.imshow(np.transpose(filled, (1, 0, 2)), origin="lower", extent=extent, interpolation="nearest")
        for mask, colour in ((seg, "cyan"), (rec, "red")):
            if mask.any() and not mask.all():
                axis.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1.2, extent=extent)
        bar_x, bar_y = 0.05 * extent[1], 0.06 * extent[3]
        axis.plot([bar_x, bar_x + 10.0], [bar_y, bar_y], color="white", linewidth=3, solid_capstyle="butt")
        axis.text(bar_x + 5.0, bar_y + 0.03 * extent[3], "10 mm", color="white", ha="center", fontsize=9)
        axis.set_title(f"voxel axis {axis_index} at index {centre[axis_index]}", fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title + "\ncyan: segmentation, red: reconstruction; filled orange: only segmented, "
                    "purple: only reconstructed", fontsize=10)
    figure.tight_layout()
    # where the slices cut, machine-readable (a PNG text chunk), so a test can hold the picture to the record
    where = json.dumps({"slice_voxel": [int(c) for c in centre]})
    result = _replace_atomic(Path(path), lambda p: figure.savefig(str(p), format="png",
                                                                 metadata={"Description": where}))
    plt.close(figure)
    return result
