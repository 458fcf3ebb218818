"""Data for the review page's interactive viewer (NiiVue): one small script per organ that works from file://.

Browsers refuse ``fetch`` of local files, so a page opened from disk cannot load NIfTI files by URL; a ``<script>``
tag can load a local script. Each judged organ gets ``viewer_data.js``: the image (when there is one), segmentation,
reconstruction and difference map as gzipped NIfTI in base64, cut to the organ's box with 15 mm around it and, for
a large organ, thinned to at most :data:`MAX_VIEWER_SIDE` voxels a side (pictures only: scores never see this).
The page loads it when the reviewer opens the organ. NiiVue itself (BSD-2-Clause) is vendored as one file,
``shapeqc/outputs/web/niivue.umd.js``, copied beside ``report.html``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np

from shapeqc.transforms.boxes import box_affine

NIIVUE_VERSION = "0.69.0"
NIIVUE_FILE = Path(__file__).resolve().parent / "web" / "niivue.umd.js"
MAX_VIEWER_SIDE = 192
VIEWER_MARGIN_MM = 15.0


def copy_niivue(out_dir: str | os.PathLike) -> Path:
    """The vendored NiiVue copied to ``out_dir/niivue.umd.js`` (once: kept when already there and equal in size)."""
    target = Path(out_dir) / "niivue.umd.js"
    if not target.exists() or target.stat().st_size != NIIVUE_FILE.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NIIVUE_FILE, target)
    return target


def viewer_key(record: dict) -> str:
    """How the page finds an organ's viewer data: ``case/organ/bundle``."""
    return f"{record['case']}/{record['organ'] or ''}/{record['bundle']}"


def _nifti_base64(array: np.ndarray, affine: np.ndarray) -> str:
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    image.header.set_xyzt_units("mm")
    return base64.b64encode(gzip.compress(image.to_bytes(), compresslevel=6)).decode("ascii")


def viewer_box(occupied: tuple[slice, slice, slice], shape: tuple[int, ...], spacing) -> tuple[slice, ...]:
    """``occupied`` (the organ's box) grown by :data:`VIEWER_MARGIN_MM` and clipped to ``shape``."""
    margin = [int(np.ceil(VIEWER_MARGIN_MM / s)) for s in spacing]
    return tuple(slice(max(0, b.start - m), min(n, b.stop + m))
                 for b, m, n in zip(occupied, margin, shape, strict=True))


def write_viewer_data(path: str | os.PathLike, key: str, box: tuple[slice, ...], affine: np.ndarray,
                      segmentation: np.ndarray, reconstruction: np.ndarray, difference: np.ndarray,
                      image: np.ndarray | None = None, window: tuple[float, float] | None = None) -> Path:
    """Write ``path`` (a script registering ``window.shapeqcViewer[key]``) with the volumes cut to ``box``; every
    array (D, H, W) on the grid of ``affine``."""
    step = [max(1, int(np.ceil((b.stop - b.start) / MAX_VIEWER_SIDE))) for b in box]
    cut = tuple(slice(b.start, b.stop, s) for b, s in zip(box, step, strict=True))
    cut_affine = box_affine(affine, box)
    cut_affine[:3, :3] *= np.array(step)[None, :]
    volumes = {"segmentation": np.asarray(segmentation[cut], dtype=np.uint8),
               "reconstruction": np.asarray(reconstruction[cut], dtype=np.uint8),
               "difference": np.asarray(difference[cut], dtype=np.uint8)}
    if image is not None:
        volumes["image"] = np.asarray(image[cut], dtype=np.float32)
    payload = {name: _nifti_base64(array, cut_affine) for name, array in volumes.items()}
    payload["window"] = list(window) if window else None
    text = ("window.shapeqcViewer = window.shapeqcViewer || {};\n"
            f"window.shapeqcViewer[{json.dumps(key)}] = {json.dumps(payload)};\n")
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path
