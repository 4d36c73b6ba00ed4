"""On-device code: a verified bundle run by its engine (numpy + that engine only, never torch)."""

from edgetl.runtime.model import Head, Model, Prediction

__all__ = ["Head", "Model", "Prediction"]
