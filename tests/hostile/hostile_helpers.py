"""Helpers of the hostile-input suite: run the CLI in a child process, measure it, build small files."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float  # the child's peak resident memory (ru_maxrss)


# The measured child writes its own peak (VmHWM: the high-water mark of its address space, which
# starts afresh at exec) on exit. ru_maxrss from wait4 cannot be used: a child forked from the
# big pytest process inherits the parent's high-water mark.
PEAK_PRELUDE = """
import atexit as _atexit, os as _os
def _report_peak(path=_os.environ.get("SONIC_TEST_PEAK_FILE")):
    if path:
        for _line in open("/proc/self/status"):
            if _line.startswith("VmHWM:"):
                open(path, "w").write(_line.split()[1])
_atexit.register(_report_peak)
"""


def run_python(code: str, *args, timeout: float = 120, cwd=None) -> Outcome:
    """Run `python -c code args...` with our `sonic` first on the path, measuring its peak memory."""
    return run_command([sys.executable, "-c", PEAK_PRELUDE + code, *map(str, args)], timeout=timeout, cwd=cwd)


def run_sonic(*args, timeout: float = 300, cwd=None) -> Outcome:
    """`python -m sonic ARGS` (through runpy, so the peak-memory report is installed first)."""
    code = PEAK_PRELUDE + "import runpy, sys\nsys.argv[0] = 'sonic'\nrunpy.run_module('sonic', run_name='__main__')"
    return run_command([sys.executable, "-c", code, *map(str, args)], timeout=timeout, cwd=cwd)


def run_command(command: list[str], *, timeout: float, cwd=None) -> Outcome:
    """Run a child with stdin closed and a wall-clock limit; `peak_mb` is its own peak memory."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   SONIC_TEST_PEAK_FILE=peak.name)
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                   cwd=cwd or REPO)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            err.seek(0)
            raise AssertionError(f"{command[1:4]} hung for more than {timeout} s; stderr: "
                                 f"{err.read().decode(errors='replace')[-2000:]}") from None
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        text = peak.read().strip()
        return Outcome(process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                       seconds, int(text) / 1024 if text else float("nan"))


def assert_one_line_error(outcome: Outcome, *words: str) -> str:
    """Exit status 2, one `error:` line, no traceback, every word in it (case-insensitive); returns the line."""
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.returncode == 2, f"exit {outcome.returncode}; stderr:\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, got:\n{outcome.stderr[-3000:]}"
    for word in words:
        assert word.lower() in errors[0].lower(), f"{word!r} not in {errors[0]!r}"
    return errors[0]


# ------------------------------------------------------------------------------ small files
def speech(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t + 0.4)
    return ((voice + 0.01 * rng.standard_normal(t.size)) * envelope).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, *, header_rate: int | None = None, float32: bool = False,
              data_size: int | None = None) -> bytes:
    """A mono WAV written by hand, so the header can lie (rate, data size)."""
    if float32:
        payload, fmt, bits = samples.astype("<f4").tobytes(), 3, 32
    else:
        payload, fmt, bits = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), 1, 16
    rate_field = header_rate if header_rate is not None else rate
    block = bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate_field, rate_field * block, block, bits)
    size = data_size if data_size is not None else len(payload)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def lying_png(width: int, height: int, rows_present: int) -> bytes:
    """An RGB PNG whose header promises `height` rows and whose (valid) zlib stream holds fewer."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rng = np.random.default_rng(0)
    raw = b"".join(b"\x00" + rng.integers(0, 255, width * 3, dtype=np.uint8).tobytes() for _ in range(rows_present))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def portrait(width: int = 72, height: int = 80) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = np.full((height, width, 3), 90, np.uint8)
    img[height // 4:height * 3 // 4, width // 4:width * 3 // 4] = (200, 160, 140)
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, hidden ones included (to prove nothing was left behind)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))
