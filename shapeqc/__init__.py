"""shapeqc: shape-prior quality control of organ segmentations (stages: docs/architecture.md)."""

__version__ = "0.1.0"
