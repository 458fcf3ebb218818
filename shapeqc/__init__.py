"""shapeqc: shape-prior quality control of organ segmentations."""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    # submodules on first attribute access, so bundle configs can write `$from shapeqc import training_data`
    # (MONAI resolves that with getattr) without `import shapeqc` loading torch and MONAI up front
    try:
        return importlib.import_module(f"shapeqc.{name}")
    except ModuleNotFoundError as error:
        raise AttributeError(f"module 'shapeqc' has no attribute {name!r}") from error
