"""shapeqc: shape-prior quality control of organ segmentations."""

__version__ = "0.1.0"
