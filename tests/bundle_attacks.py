"""Copies of the shipped adrenal bundle that each change one thing so that using them runs code of their own: the
attack vectors of issue 30. Each writes ``marker`` (a file) when its code runs; a refused bundle never does.

Shared by tests/test_bundle_trust.py (the CLI, Dask workers, federated jobs) and tests/test_app.py (the Deploy app).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "adrenal_gland"


def _touch(marker: Path, value) -> str:
    """A `$` expression that writes ``marker`` and evaluates to ``value``."""
    return f"$__import__('pathlib').Path({str(marker)!r}).touch() or {value!r}"


def _hubconf(marker: Path) -> str:
    return (f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
            "from shapeqc.prior.ifnet import IFNet\n\n\n"
            "def ifnet(**kwargs):\n    return IFNet(grid_size=64, channels=[8, 16, 32, 32], hidden=128)\n")


# name -> what it changes; every one of them ran its code under `shapeqc analyse` before the trust model
VECTORS = ("torch_hub_load", "macro_payload", "nested_key", "meta_reference", "relative_id", "merge_key",
           "import_anywhere", "mode_debug")


def attack_bundle(folder: Path, vector: str, marker: Path) -> Path:
    """A copy of the adrenal bundle in ``folder/adrenal_gland`` changed by ``vector`` (see :data:`VECTORS`)."""
    bundle = folder / "adrenal_gland"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("docs"))
    path = bundle / "configs" / "inference.yaml"
    text = path.read_text()
    config = yaml.safe_load(text)
    if vector == "torch_hub_load":  # the bundle's own hubconf.py, outside the old digest
        config["network_def"] = {"_target_": "torch.hub.load", "repo_or_dir": "@bundle_root", "model": "ifnet",
                                 "source": "local", "trust_repo": True}
        (bundle / "hubconf.py").write_text(_hubconf(marker))
    elif vector == "macro_payload":  # a macro copies an unchecked `$` item into network_def
        config["payload"] = _touch(marker, 64)
        config["network_def"]["grid_size"] = "%payload"
    elif vector == "nested_key":  # a top-level key that MONAI merges into network_def
        config["network_def#grid_size"] = _touch(marker, 64)
    elif vector == "meta_reference":  # the expression sits in metadata.json
        config["network_def"]["grid_size"] = "@_meta_#grid"
        metadata_path = bundle / "configs" / "metadata.json"
        metadata = json.loads(metadata_path.read_text())
        metadata["grid"] = _touch(marker, 64)
        metadata_path.write_text(json.dumps(metadata, indent=1))
    elif vector == "relative_id":  # `@##payload` is the top-level payload
        config["payload"] = _touch(marker, 64)
        config["network_def"]["grid_size"] = "@##payload"
    elif vector == "merge_key":  # `+network_def` merges into network_def after the raw file was read
        config["+network_def"] = {"grid_size": _touch(marker, 64)}
    elif vector == "import_anywhere":  # MONAI evaluates every import statement when any item is resolved
        config["helper"] = "$import shapeqc_payload"
        # the module is found where the process was started (python -m puts its folder first on the path)
        (folder / "shapeqc_payload.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    elif vector == "mode_debug":  # _mode_ debug runs the component under pdb; refused, runs nothing here
        config["inferer"]["_mode_"] = "debug"
    else:
        raise ValueError(vector)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return bundle
