"""Metrics, reports and plots for age and gender predictions."""

__version__ = "0.1.0"
