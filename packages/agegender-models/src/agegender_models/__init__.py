"""Keras age and gender models with pluggable backbones."""

__version__ = "0.1.0"
