"""Resolving user-chosen media files safely: only ComfyUI's input, output and temp folders.

A file name comes from a combo (or an API client) and may carry an annotation
(`"clip.wav [output]"`). Absolute paths, `..` tricks and symlinks that leave the three
folders are refused before the file is opened.
"""

from __future__ import annotations

import os

import folder_paths

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mov", ".mkv", ".aiff",
                    ".aif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class UnsafePathError(ValueError):
    """The path points outside ComfyUI's input/output/temp folders or does not exist."""


def allowed_roots() -> list[str]:
    roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory()]
    return [os.path.realpath(r) for r in roots if r]


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_media_path(name: str, *, kind: str) -> str:
    """The real path of an input-folder file named `name` (annotations allowed); raises `UnsafePathError`.

    `kind` ("audio" or "image") only shapes the message.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"no {kind} file chosen: pick a file from ComfyUI's input folder or upload one")
    if os.path.isabs(name.split(" [")[0]):
        raise UnsafePathError(f"{kind} file {name!r} is an absolute path; only files in ComfyUI's input folder "
                              f"(or '[output]'/'[temp]' annotated names) are allowed - upload the file instead")
    try:
        candidate = os.path.realpath(folder_paths.get_annotated_filepath(name))
    except ValueError:  # cores since 0.28 refuse `..` paths themselves
        candidate = None
    if candidate is None or not any(_inside(candidate, root) for root in allowed_roots()):
        raise UnsafePathError(f"{kind} file {name!r} points outside ComfyUI's input/output/temp folders; "
                              f"upload it to the input folder and choose it from the list")
    if not os.path.isfile(candidate):
        raise UnsafePathError(f"{kind} file {name!r} was not found in {folder_paths.get_input_directory()}; "
                              f"upload it or refresh the list")
    return candidate


def list_input_files(extensions: tuple[str, ...]) -> list[str]:
    """File names (with sub-folders) in the input folder that end with one of `extensions`."""
    root = folder_paths.get_input_directory()
    found = []
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for file in files:
            if file.lower().endswith(extensions):
                found.append(os.path.relpath(os.path.join(folder, file), root).replace(os.sep, "/"))
    return sorted(found)


def file_fingerprint(path: str) -> str:
    """Changes whenever the file changes (for IS_CHANGED): size + mtime in ns."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"
