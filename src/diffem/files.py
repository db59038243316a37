"""Writing files: every file diffem writes goes through ``atomic_write``, so that a crash, a full disk
or Ctrl-C never leaves a half-written file and never destroys the previous version.

``atomic_write(path, write)`` calls ``write(tmp)`` with a temporary name in the destination folder
(same file system, same extension, so libraries that pick a format from the name still do), then
renames it over ``path`` with ``os.replace`` (atomic on POSIX and Windows).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np


def atomic_write(path, write: Callable[[str], None]) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".diffem-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path, text: str) -> str:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return atomic_write(path, write)


def write_npy(path, array) -> str:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
    return atomic_write(path, write)
