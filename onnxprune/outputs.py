"""Every file one run writes, published together at the end or not at all.

A command claims its outputs before any work (:meth:`OutputSet.claim`): each must be a regular
file or not exist yet, differ from the inputs, from every file the inputs' weights live in and
from the other outputs, need ``--force`` when it exists, have a name the filesystem can hold (with
the lock file beside it), fit in the free space, and be locked against a second run writing it at
the same time. A path that is a symlink is resolved once, there: the model and its external data
file are written where it points. The writers then write into private staging folders beside
their destinations (same file names, so a model's external data keeps its final name), and
:meth:`OutputSet.publish` renames every staged file into place with SIGINT and SIGTERM held back,
so an interrupt sees either all of them or none. Leaving the ``with`` block without publishing
removes everything staged.

A run killed outright (SIGKILL) cannot clean up: its staging folders are named
``.onnxprune-stage-<pid>-...`` and locked while in use, so the next run writing to that folder
removes those whose lock is free, and lock files no run holds.

``write_atomic`` is the same for one file, for API users (``PruneResult.save``, ``to_html``...).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import OnnxPruneError, UsageError

try:  # flock: POSIX only. Without it onnxprune still imports and analyses; claiming an output says why not
    import fcntl
except ImportError:
    fcntl = None

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".onnxprune-lock"
STAGE_PREFIX = ".onnxprune-stage-"
# A staging folder whose lock is free is its run's only between mkdtemp and flock (microseconds);
# one that old with a live owner's pid is a dead run's whose pid was reused.
STALE_AFTER_S = 60.0
# Bytes a claimed name grows by: its lock file ".<name>.onnxprune-lock" beside it, and its staged
# copy's path "<folder>/.onnxprune-stage-<pid>-<8 random>/<name>".
_LOCK_EXTRA = len(f".{LOCK_SUFFIX}")
_STAGE_EXTRA = len(f"/{STAGE_PREFIX}{2**22}-12345678")
# Write errors that are the user's disk or folder, not a bug: one line, never "internal error".
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.ENAMETOOLONG, errno.EIO})

_HELD: set[int] = set()  # descriptors of every flock this process holds (lock files and staging folders)


@dataclass
class _Claim:
    path: Path  # as the user wrote it (for messages)
    real: Path  # resolved once at claim time: what is compared, staged and written
    what: str
    need: int = 0  # bytes it will take, at most about (0: small, not counted)


class OutputSet:
    """The outputs of one run: claimed before the work, staged during it, published at the end.

    ``force`` lets existing files be replaced; ``inputs`` are the model files (and manifests) the
    run reads: neither they nor any external data file their tensors name (whatever its name, and
    ``<input>.data``) may be written, ``force`` or not. Use as a context manager: leaving it
    without :meth:`publish` discards what was staged, and the locks are always released.
    """

    def __init__(self, *, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> None:
        self.force = force
        self.inputs = [Path(p) for p in inputs if os.fspath(p)]
        self.published: list[Path] = []
        self._protected: dict[Path, str] = {}  # resolved path -> what it is, for the refusal
        self._input_files: set[Path] = set()  # the inputs and the data files they name, resolved
        for model in self.inputs:
            named = model_data_files(model)
            self._input_files.update(Path(os.path.realpath(p)) for p in (model, *named))
            self._protect(model, f"the input file {model}")
            for data in (*named, *([model.with_name(model.name + ".data")] if model.name else [])):
                self._protect(data, f"the weights file {data} of the input {model}")
        self._claims: list[_Claim] = []
        self._locks: list[tuple[Path, int]] = []
        self._stages: dict[Path, Path] = {}  # destination folder -> its staging folder (kept for messages)
        self._stage_locks: list[int] = []  # their flocks, held until close
        self._shown: dict[Path, Path] = {}  # destination folder -> as the user wrote it
        self._new_folders: set[Path] = set()  # claimed folders that did not exist: publish makes them
        self._made: list[Path] = []  # folders publish created (for a rollback)
        self._models: dict[Path, Path] = {}  # claimed models: where written -> as given
        self._cleaned: set[Path] = set()
        self._last: _Claim | None = None  # the output staged last (being written)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def input_bytes(self) -> int:
        """Bytes of the inputs and of every external data file they name: what a pruned copy of
        them takes at most (a bound for the free-space check)."""
        return sum(f.stat().st_size for f in self._input_files if f.is_file())

    # --- before the work ------------------------------------------------------------------------

    def claim(self, path: str | os.PathLike, what: str, *, force: bool | None = None, lock: bool = True,
              need: int = 0) -> Path:
        """Check ``path`` as an output and lock it; raise UsageError (one line) if it cannot be one.
        A symlink is resolved now, once; ``need``: about how many bytes it will take."""
        _need_flock()
        _check_spelling(path, what)
        path = Path(path)
        return self._add(path, Path(os.path.realpath(path)), what, force=force, lock=lock, need=need)

    def claim_model(self, path: str | os.PathLike, what: str = "output", *, need: int = 0) -> Path:
        """Claim a model file and the ``<name>.data`` file its external weights may go to, both where
        the path points (a symlink is resolved once: the model written there names that data file)."""
        _need_flock()
        _check_spelling(path, what)
        path = Path(path)
        real = Path(os.path.realpath(path))
        if real.is_dir():
            raise UsageError(f"{what} {path} is a directory")
        data = real.with_name(real.name + ".data")
        self._add(path, real, what, need=need)  # the model's own refusals first: they say more
        self._add(data if os.path.islink(path) else path.with_name(path.name + ".data"), data,
                  f"{what}'s weights file", lock=False, follow=False)
        model_claim, data_claim = self._claims[-2:]
        self._claims[-2:] = [data_claim, model_claim]  # published first: a model never names a missing file
        self._models[real] = path
        return path

    def claim_folder(self, folder: str | os.PathLike, names: Iterable[str], what: str = "output folder",
                     needs: dict[str, int] | None = None) -> list[Path]:
        """Claim a folder (made at publish time if missing) and the files ``names`` in it. An existing
        folder that holds anything needs ``force``; the folder is locked, not each file. The files
        are the folder's entries themselves: a symlink among them is replaced, not followed."""
        _need_flock()
        _check_spelling(folder, what, folder=True)
        folder = Path(folder)
        real = Path(os.path.realpath(folder))
        if os.path.lexists(real) and not real.is_dir():
            raise UsageError(f"{what} {folder} is a file")
        if real in self._protected:
            raise UsageError(f"{what} {folder} is {self._protected[real]}; choose another")
        _check_folder(real.parent, "output")
        _check_name(real, folder, what, lock=True)
        self._clean(real.parent)
        if real.is_dir():
            self._clean(real)
            if any(real.iterdir()) and not self.force:
                raise UsageError(f"{what} {folder} is not empty; use --force to write into it")
        else:
            self._new_folders.add(real)
        self._locks.append((real, _lock(real, folder)))
        needs = needs or {}
        return [self._add(folder / name, real / name, f"{name} in the {what}", force=True, lock=False,
                          follow=False, need=needs.get(name, 0)) for name in names]

    def _add(self, path: Path, real: Path, what: str, *, force: bool | None = None, lock: bool = True,
             follow: bool = True, need: int = 0) -> Path:
        """The checks of every claim, on ``real`` (the place it will be written). ``follow``: a
        symlink at ``real`` is followed for the checks (False: it is the file replaced)."""
        force = self.force if force is None else force
        for place in {real, Path(os.path.realpath(real))}:
            if place in self._protected:
                raise UsageError(f"{what} {path} is {self._protected[place]}; choose another")
        for claim in self._claims:
            if claim.real in (real, Path(os.path.realpath(real))):
                raise UsageError(f"{what} {path} is also the {claim.what}; give each output its own path")
        if follow and real.is_dir():
            raise UsageError(f"{what} {path} is a directory")
        if os.path.lexists(real):
            kind = _file_kind(real, follow)
            if kind not in ("regular file", "symbolic link"):
                raise UsageError(f"{what} {path} is a {kind}; onnxprune writes only regular files")
            if not force:
                raise UsageError(f"{what} {path} exists; use --force to overwrite")
        if real.parent not in self._new_folders:
            _check_folder(real.parent, what)
        _check_name(real, path, what, lock=lock)
        self._clean(real.parent)
        claim = _Claim(path, real, what, need)
        self._check_space(claim)
        if lock:
            self._locks.append((real, _lock(real, path)))
        self._claims.append(claim)
        self._shown.setdefault(real.parent, path.parent)
        return path

    def _protect(self, path: Path, what: str) -> None:
        self._protected.setdefault(Path(os.path.realpath(path)), what)

    def _clean(self, folder: Path) -> None:
        if folder not in self._cleaned:
            self._cleaned.add(folder)
            remove_stale(folder)

    def _check_space(self, new: _Claim) -> None:
        """Refuse up front when the outputs on one filesystem clearly cannot fit in its free space."""
        if not new.need:
            return
        home = _existing_parent(new.real.parent)
        device = home.stat().st_dev
        need = new.need + sum(c.need for c in self._claims
                              if c.need and _existing_parent(c.real.parent).stat().st_dev == device)
        fs = os.statvfs(home)
        free = fs.f_bavail * fs.f_frsize
        if need > free:
            raise UsageError(f"{new.what} {new.path}: not enough free space in {home} ({_size(free)} free, the "
                             f"outputs there need about {_size(need)})")

    # --- during the work ------------------------------------------------------------------------

    def stage(self, path: str | os.PathLike) -> Path:
        """Where to write the claimed output ``path`` now: a private folder beside it, same file name."""
        claim = self._find(path)
        folder = claim.real.parent
        if folder not in self._stages:
            new = folder in self._new_folders
            home = folder.parent if new else folder
            if not home.is_dir():
                raise OnnxPruneError(self._vanished(folder))
            try:
                staging = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=home))
                fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise OnnxPruneError(f"cannot write {claim.path}: {exc.strerror or exc} ({home})") from None
            fcntl.flock(fd, fcntl.LOCK_EX)  # in use: no other run's clean-up takes it
            _HELD.add(fd)
            self._stage_locks.append(fd)
            self._stages[folder] = staging
        self._last = claim
        return self._stages[folder] / claim.real.name

    def _find(self, path: str | os.PathLike) -> _Claim:
        path = Path(path)
        for claim in self._claims:
            if claim.path == path:
                return claim
        real = Path(os.path.realpath(path))
        for claim in self._claims:
            if claim.real == real:
                return claim
        raise ValueError(f"{path} was not claimed as an output")

    def write_error(self, exc: OSError) -> str | None:
        """One line for an OSError a writer raised while writing a staged output (a full disk, a
        read-only or vanished folder), naming the output; None when it is not such an error."""
        staged = Path(exc.filename) if isinstance(exc.filename, str) else None
        for folder, staging in self._stages.items():
            if staged is not None and staging in staged.parents:
                shown = next((c.path for c in self._claims if c.real == folder / staged.name), staged.name)
                if exc.errno == errno.ENOENT:  # its staging folder went with the destination folder
                    return self._vanished(folder)
                return f"cannot write {shown}: {exc.strerror or exc}; nothing was written"
        if exc.errno not in DISK_ERRNOS or self._last is None or staged is not None:
            return None
        # no file name (write() on an open file): the writers write each output right after staging it
        return f"cannot write {self._last.path}: {exc.strerror or exc}; nothing was written"

    def _vanished(self, folder: Path) -> str:
        return (f"output folder {self._shown.get(folder, folder)} was removed during the run; nothing was "
                "written (onnxprune does not make it again)")

    # --- at the end -----------------------------------------------------------------------------

    def publish(self) -> list[Path]:
        """Rename every staged output into place, in claim order, with SIGINT and SIGTERM held back
        until all are there; returns the paths written (as given). Outputs never staged are skipped.
        A destination folder that vanished since it was claimed is not made again: OnnxPruneError,
        and nothing is written. If a rename fails, the ones already renamed are removed again."""
        for folder, staging in self._stages.items():
            if not staging.is_dir() or not (folder in self._new_folders or folder.is_dir()):
                raise OnnxPruneError(self._vanished(folder))
        done: list[_Claim] = []
        claim = None
        with interrupts_deferred():
            try:
                for claim in self._claims:
                    staging = self._stages.get(claim.real.parent)
                    if staging is None or not (staging / claim.real.name).exists():
                        continue
                    if not claim.real.parent.is_dir():
                        claim.real.parent.mkdir()  # a claimed new folder (stage() checked its parent)
                        self._made.append(claim.real.parent)
                    _replace(staging / claim.real.name, claim.real)
                    done.append(claim)
            except BaseException as exc:  # none of this run's outputs may stay: take back those renamed
                for renamed in done:
                    renamed.real.unlink(missing_ok=True)
                for folder in reversed(self._made):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                if isinstance(exc, OSError) and claim is not None:
                    raise OnnxPruneError(f"cannot write {claim.path}: {exc.strerror or exc}; nothing was written "
                                         "(an existing file it was to replace may be gone)") from None
                raise
            self.published = [claim.path for claim in done]
        for claim in done:
            shown = self._models.get(claim.real)
            data = claim.real.with_name(claim.real.name + ".data")
            if shown is not None and data.exists() and Path(os.path.abspath(shown)).parent != claim.real.parent:
                log.warning("%s links into another folder: onnx and onnxruntime find its weights file %s only "
                            "when the model is opened as %s", shown, data.name, claim.real)
        return self.published

    def close(self) -> None:
        """Discard what was staged and not published, and release the locks. (The staging folders'
        names stay known: an error raised in the block is reported after this, see write_error.)"""
        for staging in self._stages.values():
            shutil.rmtree(staging, ignore_errors=True)
        for fd in self._stage_locks:
            _close(fd)
        self._stage_locks.clear()
        for real, fd in self._locks:
            _unlock(real, fd)
        self._locks.clear()


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], *, model: bool = False) -> None:
    """Write one output: ``write(tmp)`` writes a staged file beside ``path``, which then replaces
    ``path`` (an existing file is overwritten, as for any file an API call is asked to write; a
    symlink is followed, once). ``model``: also publish the ``<name>.data`` file ``write`` may put
    beside it, first (named after where the path points, as the model written there names it).
    A path in a run's staging folder (a command's writers) is private already: written as is, and
    a write error is left to the run, which names the output."""
    if Path(path).parent.name.startswith(STAGE_PREFIX):
        write(Path(path))
        return
    with OutputSet(force=True) as out:
        (out.claim_model if model else out.claim)(path, "output")
        try:
            write(out.stage(path))
        except OSError as exc:  # disk full, permissions: the user's problem, in one line
            raise OnnxPruneError(out.write_error(exc) or f"cannot write {path}: {exc.strerror or exc}; "
                                 "nothing was written") from None
        out.publish()


def model_data_files(model: str | os.PathLike) -> list[Path]:
    """The external data files a model file's tensors name (their ``location``, whatever the name),
    as paths beside the model, once each; [] for a file that is not a readable model (its reader
    says so later). The weights themselves are not read; an inline model's file is parsed once."""
    path = Path(model)
    if not path.is_file():  # never read a FIFO or a device here
        return []
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: the reader reports it in its own words
        return []
    names = dict.fromkeys(entry.value for tensor in external_data_helper._get_all_tensors(proto)
                          if tensor.data_location == onnx.TensorProto.EXTERNAL
                          for entry in tensor.external_data if entry.key == "location" and entry.value)
    return [path.parent / name for name in names]


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block, then deliver them again to the handlers in place
    (Python's SIGINT handler raises KeyboardInterrupt; the command's SIGTERM one does too).

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
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    for sig in dict.fromkeys(pending):
        signal.raise_signal(sig)  # its handler runs now (the default SIGTERM action ends the process)


def check_output_path(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, a path no file can be written to: a folder, a device, a FIFO, or
    one in a missing or read-only folder (an existing regular file is fine: API calls overwrite)."""
    _check_spelling(path, what)
    real = Path(os.path.realpath(path))
    if real.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    if os.path.lexists(real) and _file_kind(real) != "regular file":
        raise UsageError(f"{what} {path} is a {_file_kind(real)}; onnxprune writes only regular files")
    _check_folder(real.parent, what)
    _check_name(real, Path(path), what, lock=True)


def remove_stale(folder: Path) -> None:
    """Remove what killed runs left in ``folder``: staging folders whose lock is free (their run is
    gone) and lock files no run holds. Best effort: what cannot be removed stays."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.name.startswith(STAGE_PREFIX) and entry.is_dir(follow_symlinks=False):
                _remove_stale_stage(Path(entry.path))
            elif (entry.name.startswith(".") and entry.name.endswith(LOCK_SUFFIX)
                  and entry.is_file(follow_symlinks=False)):
                _remove_free_lock(Path(entry.path))
        except OSError as exc:
            log.debug("could not clean %s: %s", entry.path, exc)


def _remove_stale_stage(staging: Path) -> None:
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its run is still going
        owner = staging.name[len(STAGE_PREFIX):].split("-")[0]
        young = time.time() - os.fstat(fd).st_mtime < STALE_AFTER_S
        if young and owner.isdigit() and _alive(int(owner)):
            return  # just made, not locked yet
        log.debug("removing %s, left by a killed run", staging)
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(fd)


def _remove_free_lock(lock: Path) -> None:
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # held
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # removed while held: _lock's loop copes
            lock.unlink()
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _need_flock() -> None:
    """Outputs are locked and staged with flock, which only POSIX systems have: refuse in one line,
    before anything is written or locked, where this Python has no fcntl (Windows: use WSL)."""
    if fcntl is None:
        raise UsageError("writing outputs needs a POSIX system (Linux, macOS; on Windows, WSL): this Python has "
                         "no fcntl module for the output lock")


def _check_spelling(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """Refuse what is no file path before it becomes one: "" (Path("") is "."), "-" (onnxprune
    never writes to stdout) and a path ending in "/" (a folder; pathlib would drop the slash)."""
    raw = os.fspath(path)
    if raw == "":
        raise UsageError(f"{what} path is empty")
    if raw == "-":
        raise UsageError(f"{what} '-': onnxprune does not write to stdout; give a file path (./- for a file "
                         "named '-')")
    if not folder and (raw.endswith(os.sep) or raw.endswith(f"{os.sep}.") or raw in (".", "..")):
        raise UsageError(f"{what} {raw} names a folder; give a file path")


def _check_name(real: Path, shown: Path, what: str, *, lock: bool) -> None:
    """Refuse a name the filesystem cannot hold, counting what onnxprune adds to it (the lock file's
    ".<name>.onnxprune-lock", the staging folder in the path), so it fails now, not after the work."""
    home = _existing_parent(real.parent)
    name_max = _pathconf(home, "PC_NAME_MAX", 255)
    path_max = _pathconf(home, "PC_PATH_MAX", 4096)
    length = len(os.fsencode(real.name)) + (_LOCK_EXTRA if lock else 0)
    if length > name_max:
        extra = f" with the {_LOCK_EXTRA} bytes of its lock file's name" if lock else ""
        raise UsageError(f"{what} {shown}: file name too long ({length} bytes{extra}; the filesystem allows "
                         f"{name_max})")
    if len(os.fsencode(real)) + _STAGE_EXTRA >= path_max:
        raise UsageError(f"{what} {shown}: path too long ({len(os.fsencode(real))} bytes and "
                         f"{_STAGE_EXTRA} for its staging folder; the system allows {path_max - 1})")


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _replace(src: Path, dst: Path) -> None:
    """Move a staged file into place with the permissions a new file gets (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o666 & ~umask)
    os.replace(src, dst)


def _file_kind(path: Path, follow: bool = True) -> str:
    try:
        mode = os.stat(path, follow_symlinks=follow).st_mode
    except OSError as exc:  # a symlink loop, a dangling link's directory...
        return f"path that cannot be read ({exc.strerror or exc})"
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
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


def _lock(real: Path, shown: Path) -> int:
    """Take an exclusive lock on a hidden ``.<name>.onnxprune-lock`` file beside ``real``.

    flock is dropped by the kernel when a process dies, so a killed run never blocks the next
    one; the loop makes sure we hold the lock on the file that is at the path now (its last
    holder, or a later run's clean-up, removes it)."""
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
                _HELD.add(fd)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(real: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        real.with_name(f".{real.name}{LOCK_SUFFIX}").unlink()
    _close(fd)


def _close(fd: int) -> None:
    _HELD.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def close_inherited_locks() -> None:
    """In a forked child (a pool worker), first thing: close its copies of the parent's lock
    descriptors. A flock belongs to the open file, which fork shares, so a child that outlived its
    parent would otherwise keep the parent's outputs locked; the parent's own locks are untouched."""
    for fd in list(_HELD):
        _close(fd)


__all__ = ["OutputSet", "check_output_path", "interrupts_deferred", "model_data_files", "remove_stale",
           "write_atomic"]
