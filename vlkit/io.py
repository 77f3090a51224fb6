"""Files on disk: the cache root, atomic writes, and cross-platform file locks.

Every write that must never be seen half-done goes through this module. A file is
written to a temp file in the same folder, fsync'ed, then moved over the target with
``os.replace`` (atomic on POSIX and Windows); a folder is built as a hidden temp
folder beside its target and published with one rename. A crash leaves the old
target intact and at most a hidden temp leftover: a temp file (``.<name>.*.tmp<suffix>``),
which readers never look at, or a temp folder (``.<name>.partial-<pid>-*``), which
the next write of that folder deletes once its process is gone.

Locks are :mod:`filelock` locks (``fcntl.flock`` on POSIX, ``LockFileEx`` on Windows),
so vlkit runs wherever Python does. This module imports nothing from vlkit but errors.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import filelock

from vlkit.errors import VlkitError

__all__ = ["cache_root", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_file",
           "atomic_dir", "temp_dir_beside", "publish_dir", "read_json", "current_umask", "FileLock"]


def cache_root() -> Path:
    """The cache root: ``$VLKIT_CACHE`` if set, else ``~/.cache/vlkit`` (not created here)."""
    env = os.environ.get("VLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlkit"


# ---- permissions ----------------------------------------------------------------------
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without a window where another thread sees it changed.

    Linux reports it in ``/proc/self/status``; elsewhere ``os.umask`` is set and restored
    at once under a lock (the only portable way to read it).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _follow_umask(path: Path, folder: bool = False) -> None:
    """Give a ``mkstemp``/``mkdtemp`` product (private: 0600/0700) the mode a plain
    ``open``/``mkdir`` would have had: 0666/0777 less the umask."""
    if os.name == "posix":
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


# ---- files ----------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; Windows cannot open a folder for fsync)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (Windows' fsync needs a writable handle; POSIX takes either)."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except PermissionError:  # a read-only file a builder copied in
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit its content replaces ``path`` in one step.

    For writers that take a file name (``np.save``, ``safetensors.torch.save_file``,
    ``faiss.write_index``)::

        with atomic_file(target) as tmp:
            save_file(tensors, str(tmp))

    On an exception the temp file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden, and ending in the target's suffix: np.save would append ".npy" to any other name
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        _follow_umask(tmp)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file + fsync + rename (never half-written)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as JSON (indent 1) to ``path`` atomically; ``default`` converts what JSON cannot hold."""
    return atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=sort_keys, default=default).encode())


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The JSON in ``path``; a missing, unreadable or malformed file is a one-line
    :class:`VlkitError` naming it as ``what`` and saying ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise VlkitError(f"{what} {path} is missing: {fix}") from None
    except OSError as exc:
        raise VlkitError(f"cannot read {what} {path} ({exc.strerror or exc}): {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"not JSON: {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
        raise VlkitError(f"{what} {path} is damaged ({reason}): {fix}") from None


# ---- folders --------------------------------------------------------------------------
def creation_folder(path: str | Path) -> Path:
    """The nearest existing folder above ``path``: where creating ``path`` (and any missing parents) starts."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def unwritable_reason(folder: str | Path) -> str | None:
    """Why no file can be created in ``folder`` (the OS's reason), or None; probes with a temp file
    that is deleted at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (never signals it: ``os.kill`` on Windows would end it)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists under another user
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete temp folders of ``path`` left by writers whose process is gone (killed mid-write)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:partial|old)-(\d+)(?:-|$)")
    for leftover in path.parent.glob(f".{path.name}.*"):
        match = pattern.match(leftover.name)
        if match is not None and leftover.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty hidden folder beside ``path`` (``.<name>.partial-<pid>-*``) to build it in.

    Temp folders of ``path`` left by dead processes are deleted first. The folder follows
    the umask (``rwxr-xr-x`` under the usual 022: a cache may be shared), not ``mkdtemp``'s
    private mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    _follow_umask(tmp, folder=True)
    return tmp


def publish_dir(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished folder ``tmp`` (from :func:`temp_dir_beside`) to ``path``, replacing it.

    Files in ``tmp`` are fsync'ed first. An existing ``path`` is renamed aside, ``tmp`` is
    renamed into place, then the old folder is deleted: at every instant ``path`` is either
    the old folder, absent for the span of one rename, or the new one, never a mix.
    """
    tmp, path = Path(tmp), Path(path)
    for file in tmp.rglob("*"):
        if file.is_file() and not file.is_symlink():
            _fsync_file(file)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
        os.replace(path, old / path.name)  # into a fresh folder: the rename never lands on a stranger
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder to fill; on a clean exit it replaces ``path`` (see :func:`publish_dir`).

    On an exception the temp folder is deleted and ``path`` is left as it was.
    """
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- locks ----------------------------------------------------------------------------
class FileLock:
    """An exclusive lock held through the file ``path``, between processes, on every platform.

    ``with FileLock(path):`` waits for the lock. ``FileLock(path, busy=message).acquire(wait=False)``
    raises ``VlkitError(message)`` at once when another holder has it. Two ``FileLock`` objects
    on one path exclude each other even inside one process.
    """

    def __init__(self, path: str | Path, busy: str | None = None) -> None:
        self.path = Path(path)
        self.busy = busy or f"{self.path} is locked by another vlkit process: wait for it to finish"
        self._lock = filelock.FileLock(str(self.path), thread_local=False)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock.is_locked

    def acquire(self, wait: bool = True) -> "FileLock":
        """Take the lock: block until free (``wait``), else raise ``VlkitError(busy)`` if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except filelock.Timeout:
            raise VlkitError(self.busy) from None
        return self

    def release(self) -> None:
        """Give the lock back (a no-op when not held)."""
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> "FileLock":
        return self.acquire(wait=True)

    def __exit__(self, *exc: object) -> None:
        self.release()
