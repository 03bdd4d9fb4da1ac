"""Make ``sar`` importable in a notebook's kernel. Every notebook's first cell runs it where
``sar`` is missing (so a notebook copied out of the checkout never needs this file):

    if importlib.util.find_spec("sar") is None:
        %run ../scripts/ensure_sar.py

Where the kernel's Python already imports ``sar`` it does nothing and prints nothing. Otherwise
(a fresh environment, a Jupyter started outside ``make lab``) it installs this checkout,
editable and with its dependencies, with the kernel's own pip, and puts the checkout on
``sys.path`` so the notebook continues without a kernel restart. It lives here, not in the
package, because it has to run before the package can be imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def ensure_sar(repository: Path = REPOSITORY,
               find_spec: Callable[[str], object] = importlib.util.find_spec,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """Install ``repository`` with ``pip install --editable`` unless ``sar`` is importable.

    Returns:
        True when it installed, False when ``sar`` was importable already.

    Raises:
        RuntimeError: pip failed; the message ends with pip's own last lines (offline without
            the dependencies, or a folder that is not this repository).
    """
    if find_spec("sar") is not None:
        return False
    print(f"sar is not installed in this kernel's Python ({sys.executable}); installing"
          f" {repository} with pip, which can take minutes the first time...", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--editable", str(repository)]
    if has_build_backend():  # offline, an isolated build would have to download setuptools
        command.insert(-2, "--no-build-isolation")
    done = run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {done.returncode}). Install the"
                           f" package yourself (README, Quick start), then restart the kernel."
                           f" pip said:\n{pip_errors(done.stderr or done.stdout or '')}")
    sys.path.insert(0, str(repository))  # importable now: pip's .pth is read at startup only
    importlib.invalidate_caches()
    print("installed; continuing without a kernel restart", flush=True)
    return True


def has_build_backend(minimum: tuple[int, int] = (64, 0)) -> bool:
    """True when this Python has setuptools >= 64 (editable installs, PEP 660) to build with."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return tuple(parts) >= minimum


def pip_errors(output: str, last: int = 8) -> str:
    """pip's ``ERROR:`` lines (the cause; pip prints it before a long trace), then its last
    ``last`` lines."""
    lines = output.strip().splitlines()
    causes = [line for line in lines[:-last] if line.lstrip().startswith("ERROR:")]
    return "\n".join(causes + lines[-last:])


if __name__ == "__main__":
    ensure_sar()
