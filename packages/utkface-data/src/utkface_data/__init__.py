"""Parse, index, split and stream the UTKFace dataset."""

__version__ = "0.1.0"
