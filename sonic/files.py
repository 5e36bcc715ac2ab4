"""Files we read and files we write: the checks and the publishing every command shares.

Reading: `require_regular_file` refuses what is not a regular file before anything opens it
(`open` on a FIFO blocks until a writer comes, a device never ends, a socket cannot be opened).

Writing: a result is built in a per-run hidden scratch folder beside its final name
(`<folder>/.sonic-partial/<pid>-<random>/`, short fixed-length names, so a long output name
cannot make a temporary name too long) and then *published*: hard-linked to the final name,
which fails when that name exists, so of two runs writing the same name exactly one wins and
the other says so; with overwrite an atomic rename replaces the old file. The scratch folder
is removed on every exit path we control; a run killed with SIGKILL leaves it behind and the
next run that writes into the same folder removes it. Each scratch folder holds an exclusive
`flock` on `<name>.lock` for as long as its run lives (the kernel drops it when the process
dies), so a running job's files are never swept.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from .errors import OutputError, SonicError

SCRATCH_DIR = ".sonic-partial"
NAME_MAX = 255  # bytes per name on Linux, macOS and Windows file systems
PATH_MAX = 4096
ORPHAN_SECONDS = 600  # a scratch folder without its lock file is swept after this long

_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def require_regular_file(path, what: str, error: type[SonicError] = SonicError) -> Path:
    """`path` as a Path when it names a regular file (symlinks followed); else `error` saying why."""
    path = Path(os.fspath(path)).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} not found (it does not exist); check the path") from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read ({exc.strerror}); check the path") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {str(path)!r} is a folder, not a file; give the path of the file itself")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise error(f"{what} {str(path)!r} is a {kind}, not a regular file; give a file (reading a pipe or "
                    f"device could block or never end)")
    return path


def refuse_special_file(path, what: str, error: type[SonicError] = SonicError) -> None:
    """Only the FIFO/device/socket part of `require_regular_file` (missing paths and folders are
    left to the caller's own messages)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        require_regular_file(path, what, error)


def check_output_name(path, error: type[SonicError] = OutputError) -> Path:
    """Refuse a name the file system would refuse (ENAMETOOLONG), before any work is done."""
    path = Path(os.fspath(path))
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise error(f"the output name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; file systems "
                        f"allow at most {NAME_MAX} bytes per name: choose a shorter name")
    if len(os.fsencode(os.path.abspath(path))) >= PATH_MAX:
        raise error(f"the output path is longer than {PATH_MAX} bytes; choose a shorter path")
    return path


def publish(temporary: Path, final: Path, *, overwrite: bool, error: type[SonicError] = OutputError) -> Path:
    """Give the finished `temporary` its final name: create-if-absent unless `overwrite`."""
    if overwrite:
        os.replace(temporary, final)
        return final
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise error(f"{str(final)!r} was created by someone else while this run was writing it (another run?); "
                    f"it was left untouched: choose another name, or pass --overwrite to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        _publish_without_links(temporary, final, error)  # a file system without hard links (FAT, some FUSE)
        return final
    temporary.unlink(missing_ok=True)
    return final


def _publish_without_links(temporary: Path, final: Path, error: type[SonicError]) -> None:
    try:
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # claim the name first
    except FileExistsError:
        raise error(f"{str(final)!r} already exists; choose another name, or pass --overwrite to replace it") from None
    os.replace(temporary, final)


class Scratch:
    """A per-run hidden folder for temporaries next to the outputs (see the module docstring).

    Use as a context manager: `with Scratch(folder) as scratch: scratch.path("video.mp4")`.
    """

    def __init__(self, folder):
        self.root = Path(os.fspath(folder)) / SCRATCH_DIR
        self.dir: Path | None = None
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None

    def __enter__(self) -> "Scratch":
        sweep(self.root)
        for _ in range(20):
            self.root.mkdir(exist_ok=True)
            token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            lock_path = self.root / f"{token}.lock"
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            except FileNotFoundError:
                continue  # another run swept the empty root just now
            if _try_lock(fd, without_flock=True) and _same_file(fd, lock_path):
                self._lock_fd, self._lock_path = fd, lock_path
                self.dir = self.root / token
                self.dir.mkdir()
                return self
            os.close(fd)  # a sweeping run took it in the instant before our lock: take another name
        raise OutputError(f"could not create a scratch folder in {str(self.root)!r}; check the folder")

    def path(self, name: str) -> Path:
        assert self.dir is not None, "use Scratch as a context manager"
        return self.dir / name

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        _remove_if_empty(self.root)


def sweep(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` whose run is gone; returns what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    locks = {p.stem for p in root.glob("*.lock")}
    for lock_path in root.glob("*.lock"):
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            if not (_try_lock(fd, without_flock=False) and _same_file(fd, lock_path)):
                continue  # its run is alive
            folder = root / lock_path.stem
            shutil.rmtree(folder, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed.append(folder)
        finally:
            os.close(fd)
    for folder in root.iterdir():
        # a run killed between removing its folder's files and its lock file, or an old layout
        if folder.is_dir() and folder.name not in locks and time.time() - folder.stat().st_mtime > ORPHAN_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    _remove_if_empty(root)
    return removed


def _try_lock(fd: int, *, without_flock: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a lock file is then only ever removed by its own run
        return without_flock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another run's files) or already gone
