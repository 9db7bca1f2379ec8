"""Every file one run writes, published together at the end or not at all.

A command claims its outputs before any work (:meth:`OutputSet.claim`): each must be a regular
file or not exist yet, differ from the inputs and from the other outputs, need ``--force`` when it
exists, and be locked against a second run writing it at the same time. The writers then write
into private staging folders beside their destinations (same file names, so a model's external
data keeps its final name), and :meth:`OutputSet.publish` renames every staged file into place
with Ctrl-C held back, so an interrupt sees either all of them or none. Leaving the ``with``
block without publishing removes everything staged.

``write_atomic`` is the same for one file, for API users (``PruneResult.save``, ``to_html``...).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import OnnxPruneError, UsageError

LOCK_SUFFIX = ".onnxprune-lock"


@dataclass
class _Claim:
    path: Path  # as the user wrote it (for messages)
    real: Path  # symlinks and .. resolved: what is compared and written
    what: str


class OutputSet:
    """The outputs of one run: claimed before the work, staged during it, published at the end.

    ``force`` lets existing files be replaced; ``inputs`` (and their ``.data`` files) may never be
    written. Use as a context manager: leaving it without :meth:`publish` discards what was staged,
    and the locks are always released.
    """

    def __init__(self, *, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> None:
        self.force = force
        self.inputs = [Path(p) for p in inputs]
        self.published: list[Path] = []
        self._claims: list[_Claim] = []
        self._locks: list[tuple[Path, int]] = []
        self._stages: dict[Path, Path] = {}  # destination folder -> its private staging folder
        self._made: list[Path] = []  # folders publish created (for a rollback)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # --- before the work ------------------------------------------------------------------------

    def claim(self, path: str | os.PathLike, what: str, *, force: bool | None = None, lock: bool = True,
              folder_made: bool = False) -> Path:
        """Check ``path`` as an output and lock it; raise UsageError (one line) if it cannot be one.
        ``folder_made``: its folder is a claimed output folder, made at publish time if missing."""
        path = Path(path)
        real = Path(os.path.realpath(path))
        force = self.force if force is None else force
        for other in self.inputs:
            if other.exists() and real == Path(os.path.realpath(other)):
                raise UsageError(f"{what} {path} is the input file {other}; choose another")
            if real == Path(os.path.realpath(other)).with_name(other.name + ".data"):
                raise UsageError(f"{what} {path} is the weights file of the input {other}; choose another")
        for claim in self._claims:
            if claim.real == real:
                raise UsageError(f"{what} {path} is also the {claim.what}; give each output its own path")
        if real.is_dir():
            raise UsageError(f"{what} {path} is a directory")
        if os.path.lexists(real):
            kind = _file_kind(real)
            if kind != "regular file":
                raise UsageError(f"{what} {path} is a {kind}; onnxprune writes only regular files")
            if not force:
                raise UsageError(f"{what} {path} exists; use --force to overwrite")
        if not folder_made:
            _check_folder(real.parent, what)
        if lock:
            self._locks.append((real, _lock(real, path)))
        self._claims.append(_Claim(path, real, what))
        return path

    def claim_model(self, path: str | os.PathLike, what: str = "output") -> Path:
        """Claim a model file and the ``<name>.data`` file its external weights may go to."""
        path = Path(path)
        self.claim(path.with_name(path.name + ".data"), f"{what}'s weights file", lock=False)
        return self.claim(path, what)

    def claim_folder(self, folder: str | os.PathLike, names: Iterable[str], what: str = "output folder") -> list[Path]:
        """Claim a folder (made at publish time if missing) and the files ``names`` in it. An existing
        folder that holds anything needs ``force``; the folder is locked, not each file."""
        folder = Path(folder)
        real = Path(os.path.realpath(folder))
        if os.path.lexists(real) and not real.is_dir():
            raise UsageError(f"{what} {folder} is a file")
        if real.is_dir() and any(real.iterdir()) and not self.force:
            raise UsageError(f"{what} {folder} is not empty; use --force to write into it")
        _check_folder(real.parent, "output")
        self._locks.append((real, _lock(real, folder)))
        return [self.claim(folder / name, f"{name} in the {what}", force=True, lock=False, folder_made=True)
                for name in names]

    # --- during the work ------------------------------------------------------------------------

    def stage(self, path: str | os.PathLike) -> Path:
        """Where to write the claimed output ``path`` now: a private folder beside it, same file name."""
        real = Path(os.path.realpath(path))
        if not any(c.real == real for c in self._claims):
            raise ValueError(f"{path} was not claimed as an output")
        folder = self._stages.get(real.parent)
        if folder is None:
            home = _existing_parent(real.parent)
            folder = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=home))
            self._stages[real.parent] = folder
        return folder / real.name

    # --- at the end -----------------------------------------------------------------------------

    def publish(self) -> list[Path]:
        """Rename every staged output into place, in claim order, with Ctrl-C held back until all
        are there; returns the paths written (as given). Outputs never staged are skipped. If a
        rename fails, the ones already renamed are removed again and OnnxPruneError says so."""
        done: list[_Claim] = []
        with interrupts_deferred():
            try:
                for claim in self._claims:
                    staged = self._stages.get(claim.real.parent)
                    if staged is None or not (staged / claim.real.name).exists():
                        continue
                    self._make_folder(claim.real.parent)
                    _replace(staged / claim.real.name, claim.real)
                    done.append(claim)
            except BaseException as exc:  # none of this run's outputs may stay: take back those renamed
                for renamed in done:
                    renamed.real.unlink(missing_ok=True)
                for folder in reversed(self._made):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                if isinstance(exc, OSError):
                    raise OnnxPruneError(f"cannot write {claim.path}: {exc.strerror or exc}; nothing was written "
                                         "(an existing file it was to replace may be gone)") from None
                raise
            self.published = [claim.path for claim in done]
        return self.published

    def close(self) -> None:
        """Discard what was staged and not published, and release the locks."""
        for folder in self._stages.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._stages.clear()
        for real, fd in self._locks:
            _unlock(real, fd)
        self._locks.clear()

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            f.mkdir()
            self._made.append(f)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], *, model: bool = False) -> None:
    """Write one output: ``write(tmp)`` writes a staged file beside ``path``, which then replaces
    ``path`` (an existing file is overwritten, as for any file an API call is asked to write).
    ``model``: also publish the ``<name>.data`` file ``write`` may put beside it, first."""
    with OutputSet(force=True) as out:
        (out.claim_model if model else out.claim)(path, "output")
        try:
            write(out.stage(path))
        except OSError as exc:  # disk full, permissions: the user's problem, in one line
            raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
        out.publish()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block, then raise KeyboardInterrupt if one came.

    Signal handlers run on the main thread only; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


def check_output_path(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, a path no file can be written to: a folder, a device, a FIFO, or
    one in a missing or read-only folder (an existing regular file is fine: API calls overwrite)."""
    real = Path(os.path.realpath(path))
    if real.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    if os.path.lexists(real) and _file_kind(real) != "regular file":
        raise UsageError(f"{what} {path} is a {_file_kind(real)}; onnxprune writes only regular files")
    _check_folder(real.parent, what)


def _replace(src: Path, dst: Path) -> None:
    """Move a staged file into place with the permissions a new file gets (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o666 & ~umask)
    os.replace(src, dst)


def _file_kind(path: Path) -> str:
    mode = os.stat(path).st_mode
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _existing_parent(folder: Path) -> Path:
    while not folder.exists():
        folder = folder.parent
    return folder


def _check_folder(folder: Path, what: str) -> None:
    """Refuse a folder that is missing, not a folder, or not writable (os.access cannot tell a
    read-only filesystem as root, so try it)."""
    if not folder.exists():
        raise UsageError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{what} folder {folder} is a file")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise UsageError(f"{what} folder {folder} is not writable ({exc.strerror or exc})") from None


def _fcntl():
    """The fcntl module, imported here rather than at the top: ``import onnxprune`` and everything
    that writes nothing (analysis, the API without saving) work on any platform, and only writing
    outputs needs flock, that is a POSIX system (Linux, macOS; on Windows, WSL)."""
    try:
        import fcntl
    except ImportError:
        raise UsageError("writing outputs needs a POSIX system (Linux, macOS; on Windows, WSL): this Python has "
                         "no fcntl module for the output lock") from None
    return fcntl


def _lock(real: Path, shown: Path) -> int:
    """Take an exclusive lock on a hidden ``.<name>.onnxprune-lock`` file beside ``real``.

    flock is dropped by the kernel when a process dies, so a killed run never blocks the next
    one; the loop makes sure we hold the lock on the file that is at the path now (its last
    holder removes it when done)."""
    fcntl = _fcntl()  # before the lock file is created: a platform without flock leaves nothing behind
    lock = real.with_name(f".{real.name}{LOCK_SUFFIX}")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot lock {shown}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(f"another onnxprune run is writing {shown}; wait for it or choose another "
                                 "output") from None
            raise UsageError(f"cannot lock {shown}: {exc.strerror or exc}") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(real: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        real.with_name(f".{real.name}{LOCK_SUFFIX}").unlink()
    os.close(fd)


__all__ = ["OutputSet", "check_output_path", "interrupts_deferred", "write_atomic"]
