"""Every host file the agent reads or writes goes through :class:`HostRoot`.

Like cloud-init's target root, a ``HostRoot("/tmp/x")`` maps the host path ``/etc/hosts`` to
``/tmp/x/etc/hosts``; paths cannot escape the root. Writes are atomic: a temporary file in the
same directory, written, fsynced, given an explicit mode (and the previous owner when replacing),
renamed over the target, then the directory fsynced. When rename is impossible because the target
is a mount point (a bind-mounted /etc/hosts in a container answers EBUSY; across filesystems
EXDEV) the write falls back to a careful in-place rewrite of the same inode.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath

from herd_agent.errors import HostWriteError

log = logging.getLogger(__name__)

_RENAME_IMPOSSIBLE = {errno.EBUSY, errno.EXDEV, errno.EPERM}


class HostRoot:
    """The host filesystem as seen under ``root``.

    Args:
        root: directory that stands for ``/`` (default ``/``, the real host).

    All ``path`` arguments are absolute host paths (``/etc/hosts``), strings or PurePosixPath.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"HostRoot({str(self.root)!r})"

    def path(self, host_path: str | PurePosixPath) -> Path:
        """Map an absolute host path to the real path under the root.

        Raises:
            ValueError: the path is relative or climbs out of the root with ``..``.
        """
        p = PurePosixPath(host_path)
        if not p.is_absolute():
            raise ValueError(f"host path must be absolute, got {str(host_path)!r}")
        if ".." in p.parts:
            raise ValueError(f"host path must not contain '..', got {str(host_path)!r}")
        return self.root.joinpath(*p.parts[1:]) if len(p.parts) > 1 else self.root

    def exists(self, host_path: str | PurePosixPath) -> bool:
        """True when the host path exists under the root."""
        return self.path(host_path).exists()

    def read_text(self, host_path: str | PurePosixPath, default: str | None = None) -> str:
        """Read a host file as UTF-8.

        Args:
            default: returned when the file does not exist; None means raise.

        Raises:
            FileNotFoundError: the file is missing and no default was given.
        """
        try:
            return self.path(host_path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if default is None:
                raise
            return default

    def read_bytes(self, host_path: str | PurePosixPath) -> bytes:
        """Read a host file's bytes (raises FileNotFoundError when missing)."""
        return self.path(host_path).read_bytes()

    def makedirs(self, host_path: str | PurePosixPath, mode: int = 0o755) -> Path:
        """Create a host directory and its parents (existing ones are left as they are)."""
        p = self.path(host_path)
        p.mkdir(parents=True, exist_ok=True, mode=mode)
        return p

    def write(
        self,
        host_path: str | PurePosixPath,
        data: str | bytes,
        *,
        mode: int,
        only_if_changed: bool = True,
    ) -> bool:
        """Atomically write ``data`` to a host file with permission bits ``mode``.

        Args:
            data: text (UTF-8) or bytes.
            mode: permission bits, e.g. 0o644; secrets use 0o600. Applied before the data is
                visible, so a secret is never world-readable even for a moment.
            only_if_changed: when the file already holds exactly ``data`` with ``mode``, do
                nothing (the file's mtime and inode are untouched).

        Returns:
            True when the file was written, False when it was already up to date.

        Raises:
            HostWriteError: the directory is missing and cannot be made, or the write failed.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else data
        target = self.path(host_path)
        try:
            st = target.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise HostWriteError(f"cannot stat {host_path}: {exc.strerror}") from exc
        if only_if_changed and st is not None and (st.st_mode & 0o7777) == mode:
            try:
                if target.read_bytes() == payload:
                    return False
            except OSError:
                pass
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostWriteError(f"cannot create directory for {host_path}: {exc.strerror}") from exc
        try:
            self._replace(target, payload, mode, st)
        except OSError as exc:
            if exc.errno in _RENAME_IMPOSSIBLE and st is not None:
                log.info("rename over %s failed (%s); rewriting it in place", host_path, exc.strerror)
                self._write_in_place(target, payload, mode, host_path)
            else:
                raise HostWriteError(f"cannot write {host_path}: {exc.strerror}") from exc
        return True

    def _replace(self, target: Path, payload: bytes, mode: int, st: os.stat_result | None) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".herd-tmp", dir=target.parent)
        try:
            os.fchmod(fd, mode)
            if st is not None and os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            with os.fdopen(fd, "wb", closefd=True) as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(target.parent)

    @staticmethod
    def _write_in_place(target: Path, payload: bytes, mode: int, host_path: object) -> None:
        # Same inode: write the whole content, then cut what is left of the old one, then fsync.
        # A reader may see a mix for an instant, never a truncated-to-empty file first.
        try:
            fd = os.open(target, os.O_WRONLY)
            try:
                os.fchmod(fd, mode)
                view = memoryview(payload)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.ftruncate(fd, len(payload))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HostWriteError(f"cannot rewrite {host_path} in place: {exc.strerror}") from exc

    def remove(self, host_path: str | PurePosixPath) -> bool:
        """Delete a host file; True when it existed."""
        try:
            self.path(host_path).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.path(host_path).parent)
        return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
