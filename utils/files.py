"""Writing files and dirs so that nothing half-written ever looks complete: write under a temp name, then
rename into place (a rename within a file system is atomic)."""

import contextlib
import os
import shutil


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Write to `path.tmp`, rename into place only on success: no half-written file looks complete."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(final, tmp=None):
    """Yield an empty temp dir (`final.tmp` unless named); on success it replaces `final`, else it is removed.
    The old `final` is renamed `final.old` first and removed last: no half-written dir is ever at `final`."""
    tmp, old = tmp or final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
