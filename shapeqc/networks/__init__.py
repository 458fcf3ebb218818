"""Networks of shapeqc."""

from shapeqc.networks.ifnet import PRESETS, IFNet, ifnet_from_preset

__all__ = ["IFNet", "PRESETS", "ifnet_from_preset"]
