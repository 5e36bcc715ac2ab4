"""Child processes (ffmpeg) that never outlive us.

A killed CLI run (SIGKILL, the OOM killer) cannot clean up after itself, and an ffmpeg left
behind would go on writing or reading. On Linux each child asks the kernel for SIGKILL when
its parent dies (`prctl(PR_SET_PDEATHSIG)`), set between fork and exec. Elsewhere the children
are only ended by our own error paths.
"""

from __future__ import annotations

import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


_libc = None


def _die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no allocation to speak of
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _options(kwargs: dict) -> dict:
    global _libc
    if sys.platform.startswith("linux"):
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None)  # loaded here, in the parent
        kwargs.setdefault("preexec_fn", _die_with_parent)
    return kwargs


def popen(command: list[str], **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` whose child is killed when this process dies."""
    return subprocess.Popen(command, **_options(kwargs))


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` whose child is killed when this process dies."""
    return subprocess.run(command, **_options(kwargs))
