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


class WorkflowError(SonicError):
    """A workflow or jobs file, or a ComfyUI server's answer, cannot be used."""


# --------------------------------------------------------------------------------------------
# One line for every failure the user or the environment caused (the CLI's and the nodes' boundary)
# --------------------------------------------------------------------------------------------

CPU_MEMORY_ADVICE = ("this computer ran out of memory; try a shorter --duration, a smaller --min-resolution or "
                     "--memory-policy lowvram, or close other programs")
GPU_MEMORY_ADVICE = "the GPU ran out of memory; try --memory-policy lowvram, a smaller --min-resolution or --dtype bf16"

_OS_ADVICE = {  # errno name -> what to do
    "ENOSPC": "the disk is full; free some space or write somewhere else",
    "EDQUOT": "the disk quota is used up; free some space or write somewhere else",
    "ENAMETOOLONG": "a file name is too long; choose a shorter name (at most 255 bytes per name)",
    "EACCES": "permission denied; choose a folder you can write to, or fix the file's permissions",
    "EPERM": "the operation is not permitted here; choose another folder",
    "EROFS": "the file system is read-only; write somewhere else",
    "ENOENT": "no such file or folder; check the path",
    "ENOTDIR": "a part of the path is a file, not a folder; check the path",
    "EISDIR": "a folder was given where a file was expected; check the path",
    "EMFILE": "too many open files; close other programs or raise the limit (ulimit -n)",
    "EIO": "the disk reported an input/output error; check the disk or copy the file elsewhere",
    "EFBIG": "a file grew beyond the size this system allows; write somewhere else or shorten the job",
    "ECONNREFUSED": "the connection was refused; is the server running at that address?",
}


def failure_message(exc: BaseException) -> str | None:
    """One line saying what went wrong and what to do, or None when `exc` is a bug of ours.

    User- and environment-caused failures are: our `SonicError`s, operating-system errors
    (disk full, name too long, permissions, ...), running out of CPU or GPU memory, and text
    files that are not valid JSON or UTF-8. Anything else (an AssertionError, a TypeError in
    our code) is a bug and keeps its traceback.
    """
    import errno
    import json

    if isinstance(exc, SonicError):
        return str(exc).strip() or type(exc).__name__  # ours are written for people (a few say more on extra lines)
    if isinstance(exc, MemoryError) or _is_cpu_out_of_memory(exc):
        return CPU_MEMORY_ADVICE
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return GPU_MEMORY_ADVICE
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or -1, "")
        where = exc.filename if exc.filename is not None else ""
        what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
        advice = _OS_ADVICE.get(name, "check the file and the disk")
        return _one_line(f"{what}{f': {where!s}' if where else ''} ({advice})")
    if isinstance(exc, json.JSONDecodeError):
        return _one_line(f"a file is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         f"fix or replace it")
    if isinstance(exc, UnicodeDecodeError):
        return "a text file is not valid UTF-8 text (is it a binary file?); check the file given"
    return None


def _is_cpu_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator: can't allocate memory" in text
                                              or "not enough memory" in text)


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."
