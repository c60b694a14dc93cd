"""lrlab: online learning-rate adaptation for PyTorch, and a lab to compare the methods fairly.

``lrlab.optim`` holds the optimizers (import it explicitly); ``lrlab.bench`` holds the
benchmark lab.
This module imports nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
