"""What a path in a data config is, in words: the checks every file-reading source shares.

A path that is not a regular file is refused before it is opened, saying what it is (a folder, a named pipe,
a device, a link to nothing, not there): opening a named pipe waits for a writer for ever, and a device
such as ``/dev/zero`` never ends.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

_KINDS = [(stat.S_ISDIR, "a folder, not a file"),
          (stat.S_ISFIFO, "a named pipe (FIFO), not a regular file (reading it would wait for a writer)"),
          (stat.S_ISSOCK, "a socket, not a regular file"),
          (stat.S_ISCHR, "a character device, not a regular file (a device like /dev/zero never ends)"),
          (stat.S_ISBLK, "a block device, not a regular file")]


def what_is(path: Path) -> Optional[str]:
    """None for a regular file that can be read; else what ``path`` is, in words ("a folder, not a file")."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # through symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        missing = "no such file" if path.parent.is_dir() else f"no such file, nor the folder {path.parent}"
        return missing + ("" if path.is_absolute() else f" (a path relative to {Path.cwd()})")
    except NotADirectoryError:
        return "no such file: a part of the path above it is a file, not a folder"
    except PermissionError:
        return "not reachable: no permission to look into a folder above it"
    for test, words in _KINDS:
        if test(mode):
            return words
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "a file this user has no permission to read"
    return None


def regular_file(path: Path, key: str, value: object = None, hint: str = "") -> Path:
    """``path`` if it is a regular, readable file; else a :class:`ConfigError` naming ``key=value``, what the
    path is, and ``hint``."""
    what = what_is(path)
    if what is not None:
        raise ConfigError(f"{key}={path if value is None else value}: {what}.{' ' + hint if hint else ''}")
    return Path(path)


def folder_if_there(path: Path, key: str) -> Path:
    """``path``, unless something that is not a folder is there: then a :class:`ConfigError` naming ``key``
    and what it is (a folder that is not there yet is fine: a download creates it)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        what = what_is(path) or "a file"
        raise ConfigError(f"{key}={path}: {what}, not a folder. It names the folder the data files are in.")
    return path
