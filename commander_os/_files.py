"""Private files at rest, for both sides: folders 0700, files 0600, links refused, keys checked.

Every agent store, the relay's central store and its secret hold data that only their owner
may read: a database readable by other local users would bypass every token the relay checks.
So what this package creates on disk is private whatever the process's umask (a umask of 022,
the common default, would otherwise leave databases 0644 and folders 0755):

* :func:`make_private_dir` creates missing folders with mode 0700;
* :func:`create_private_file` creates a missing file with mode 0600 (SQLite then gives the
  ``-wal``, ``-shm`` and ``-journal`` files it makes beside a database the database's mode);
* :func:`refuse_symlink` refuses a database path that is a symbolic link (dangling or not),
  unless the caller allows it: a link planted at the path would send our writes elsewhere;
* :func:`warn_if_exposed` warns (:class:`~commander_os.errors.InsecureFileWarning`) when a key,
  token or secret file can be read by other users.

Existing files and folders keep their modes: tightening a folder the user chose (their home,
say) behind their back would surprise more than it protects.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from commander_os.errors import InsecureFileWarning, StorageError

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "make_private_dir",
    "refuse_symlink",
    "warn_if_exposed",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: Permission bits that give group or others any access.
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO
# O_NOFOLLOW: a link at the path fails the open instead of creating the link's target.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; existing folders stay as they are.

    Returns ``path``. Raises ``OSError`` as :func:`os.mkdir` does (other than "exists").
    """
    missing: list[Path] = []
    current = Path(path)
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by another process meanwhile: theirs, leave its mode
        # mkdir's mode passes through the umask; a umask such as 0o277 would take our own
        # access away, so set exactly 0700 on what we made.
        os.chmod(folder, PRIVATE_DIR_MODE)
    return Path(path)


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless something exists there; True if created.

    Never follows a symbolic link at ``path`` (``O_EXCL`` with ``O_CREAT``, and ``O_NOFOLLOW``).
    """
    try:
        fd = os.open(path, _CREATE_FLAGS, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # as in make_private_dir: whatever the umask
    finally:
        os.close(fd)
    return True


def refuse_symlink(path: Path, *, what: str = "database") -> None:
    """Raise :class:`~commander_os.errors.StorageError` if ``path`` is a symbolic link.

    A dangling link counts too: opening it would create the file wherever it points.
    """
    if os.path.islink(path):
        target = os.readlink(path)
        raise StorageError(
            f"{path} is a symbolic link (to {target}): refusing to open the {what} through it; "
            "open the real path, or set follow_symlinks: true if the link is intended"
        )


def warn_if_exposed(path: Path, what: str) -> None:
    """Warn with :class:`~commander_os.errors.InsecureFileWarning` if other users may read or
    change ``path`` (group or other permission bits set). Silent where modes do not exist."""
    if os.name != "posix":  # pragma: no cover - Windows has ACLs, not mode bits
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the caller reads the file next and reports what is wrong with it
    if mode & _SHARED_BITS:
        warnings.warn(
            f"{path}: the {what} is accessible by other users (mode "
            f"{stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
            InsecureFileWarning,
            stacklevel=3,
        )
