"""Offline check of a bundle's ``configs/metadata.json`` against the MONAI Bundle specification's fields.

``python -m monai.bundle verify_metadata`` downloads the schema named in the file, which needs the internet;
this check validates the same mandatory keys and tensor format specifiers without it, plus shapeqc's own keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANDATORY_KEYS = ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                  "authors", "copyright", "network_data_format")
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
               "is_patch_data", "channel_def")
SHAPEQC_KEYS = ("required_packages_version", "trained", "organs", "canonical_grid")


def metadata_problems(metadata: dict) -> list[str]:
    """Every way ``metadata`` falls short of the specification (empty when it is complete)."""
    problems = [f"missing key {key!r}" for key in (*MANDATORY_KEYS, *SHAPEQC_KEYS) if key not in metadata]
    if "optional_packages_version" in metadata:
        problems.append("'optional_packages_version' is deprecated: use 'required_packages_version'")
    version = str(metadata.get("version", ""))
    if version and version not in metadata.get("changelog", {}):
        problems.append(f"changelog has no entry for version {version}")
    data_format = metadata.get("network_data_format", {})
    for section in ("inputs", "outputs"):
        tensors = data_format.get(section)
        if not tensors:
            problems.append(f"network_data_format has no {section}")
            continue
        for name, spec in tensors.items():
            problems += [f"{section}.{name} lacks {key!r}" for key in TENSOR_KEYS if key not in spec]
    if "shapeqc" not in metadata.get("required_packages_version", {}):
        problems.append("required_packages_version must name shapeqc")
    return problems


def check_bundle_metadata(bundle_dir: str | os.PathLike) -> dict:
    """Load ``<bundle>/configs/metadata.json``; raise ValueError listing every problem."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    problems = metadata_problems(metadata)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return metadata
