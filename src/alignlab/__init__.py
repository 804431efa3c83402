"""alignlab: offline preference optimisation with evidence about robustness."""

__version__ = "0.1.0"
