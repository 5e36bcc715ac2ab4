"""Errors a user can act on.

Every error raised on purpose by `sonic` derives from `SonicError`: its message says what is
wrong and how to fix it, so the CLI and the ComfyUI nodes can show it as one line instead of a
traceback.
"""

from __future__ import annotations


class SonicError(Exception):
    """Base class: a problem with the user's input, files or settings (not a bug of ours)."""


class ParameterError(SonicError, ValueError):
    """A setting is out of range or inconsistent with the inputs."""


class AudioError(SonicError):
    """The audio cannot be used (missing, undecodable, silent, too short, ...)."""


class ImageError(SonicError):
    """The portrait image cannot be used (missing, undecodable, absurd size, ...)."""


class FaceNotFoundError(ImageError):
    """No face was found in the portrait."""


class WeightsError(SonicError):
    """Model files are missing, corrupt, unsafe or not the expected model."""


class OutputError(SonicError):
    """The output file cannot be written (exists already, bad folder, encoder failure)."""


class DeviceMemoryError(SonicError):
    """The device ran out of memory; the message names the setting to change."""


class Interrupted(SonicError):
    """The job was cancelled by its callback (user interrupt)."""
