"""Sonic: one portrait + one audio clip -> a lip-synced talking-head video.

A clean re-implementation of the official Sonic (CVPR 2025) inference path that loads the
released weights unchanged. Importing this package is cheap and side-effect free: torch,
diffusers and transformers are imported only when a model is built.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import SonicConfig
from .errors import (AudioError, DeviceMemoryError, FaceNotFoundError, ImageError, Interrupted, OutputError,
                     ParameterError, SonicError, WeightsError)

__all__ = ["SonicPipeline", "SonicConfig", "SonicError", "ParameterError", "AudioError", "ImageError",
           "FaceNotFoundError", "WeightsError", "OutputError", "DeviceMemoryError", "Interrupted", "__version__"]


def __getattr__(name):
    # The pipeline pulls in torch; load it on first use only.
    if name == "SonicPipeline":
        from .pipeline import SonicPipeline

        return SonicPipeline
    raise AttributeError(f"module 'sonic' has no attribute {name!r}")
