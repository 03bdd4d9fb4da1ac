"""Load a result if it was computed before with the same configuration, else compute and keep it.

Notebooks and scripts wrap their long computations (a training run, a grid of runs)::

    from sar.cache import cached

    config = {"method": "sar", "epochs": EPOCHS, "train_size": TRAIN_SIZE, "seed": SEED}
    state = cached("02_sar_run", config, lambda: train("sar", SEED))

The file is ``<folder>/<name>-<key>.pt`` where ``key`` hashes the canonical JSON of
``{"config": config, "smoke": smoke}``; the JSON itself is stored inside the file and compared
on loading, so a changed configuration never loads a stale result, and smoke runs (the smoke
flag of :mod:`sar.config` is part of the key) never overwrite, nor read, full-run results.

* Where: ``$SAR_CACHE_DIR`` if set, else the repository's ``data/cache/`` (git-ignored, like
  everything under ``data/``). :func:`clear_cache` deletes the files (all, or one name's).
* Recompute: ``SAR_CACHE=0`` (also ``false``/``off``/``no``) or ``enabled=False`` ignores
  existing files and overwrites them with the fresh result.
* Safety: files are written atomically (a temporary file in the same folder, then
  ``os.replace``), so an interrupted run leaves the previous file or none, never half a file.
  An unreadable file is recomputed with a :class:`CacheWarning`; a result that cannot be
  saved (unpicklable, disk full) is returned all the same, with a warning.
* Many at once: :func:`cached_in_processes` computes the missing entries of a list in worker
  processes (one thread each), then loads every entry as :func:`cached` would.
* What: anything ``torch.save`` pickles: tensors, state dicts, DataFrames, dicts of those.
  Prefer a state dict to a whole ``nn.Module`` (the pickle then needs the same class code).
  Loading unpickles, so only load caches you wrote yourself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import torch

from .config import _FALSE, show_progress, smoke_mode
from .files import atomic_torch_save

T = TypeVar("T")

CACHE_ENV = "SAR_CACHE"
CACHE_DIR_ENV = "SAR_CACHE_DIR"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / "data" / "cache"
# 2: SAR's default projector init became the authors'; results cached under 1 were trained
# with the earlier init by notebooks that build SAR at its defaults, so they are recomputed
FORMAT_VERSION = 2
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CacheWarning(UserWarning):
    """A cache file could not be used (unreadable, or its stored configuration differs)."""


def cache_dir(folder: str | Path | None = None) -> Path:
    """The cache folder: ``folder``, else ``$SAR_CACHE_DIR``, else the repository's
    ``data/cache/``. Not created here."""
    if folder is not None:
        return Path(folder)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return DEFAULT_CACHE_DIR


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it: stored notebook outputs then read
    the same on every machine."""
    try:
        return str(path.resolve().relative_to(DEFAULT_CACHE_DIR.parents[1].resolve()))
    except ValueError:
        return str(path)


def cache_enabled() -> bool:
    """False when ``$SAR_CACHE`` is ``0``/``false``/``off``/``no`` (read on every call)."""
    value = os.environ.get(CACHE_ENV)
    return value is None or value.strip().lower() not in _FALSE - {""}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch scalars
        return value.item()
    raise TypeError(
        f"cache configs must be JSON-like (dicts, lists, numbers, strings, dataclasses, paths);"
        f" got {type(value).__name__}: {value!r}"
    )


def canonical_json(config: Mapping[str, Any], smoke: bool) -> str:
    """The text hashed into the file name: sorted keys, no spaces, the smoke flag beside the
    config. Tuples and lists give the same text. Raises TypeError for values JSON cannot hold."""
    payload = {"config": dict(config), "smoke": bool(smoke)}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable,
                      allow_nan=True)


def cache_path(name: str, config: Mapping[str, Any], folder: str | Path | None = None,
               smoke: bool | None = None) -> Path:
    """``<folder>/<name>-<16 hex digits of sha256(canonical_json)>.pt``.

    ``name``: letters, digits, ``_``, ``.``, ``-`` (ValueError otherwise). ``smoke`` defaults
    to :func:`sar.config.smoke_mode`.
    """
    if not _NAME.match(name):
        raise ValueError(f"cache name must match {_NAME.pattern}, got {name!r}")
    smoke = smoke_mode() if smoke is None else smoke
    key = hashlib.sha256(canonical_json(config, smoke).encode()).hexdigest()[:16]
    return cache_dir(folder) / f"{name}-{key}.pt"


def _load(path: Path, expected: str, map_location: Any) -> tuple[bool, Any]:
    """(True, value) when ``path`` holds a readable entry for ``expected``, else (False, None)
    with a warning saying why."""
    try:
        entry = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
            raise ValueError("not a sar cache file of this format")
        stored = entry["config"]
        value = entry["value"]
    except Exception as err:  # any unreadable file is recomputed
        warnings.warn(f"cache file {path} is unreadable ({type(err).__name__}: {err});"
                      " recomputing", CacheWarning, stacklevel=3)
        return False, None
    if stored != expected:  # a hash collision or an edited file: never trust it
        warnings.warn(f"cache file {path} holds another configuration; recomputing",
                      CacheWarning, stacklevel=3)
        return False, None
    return True, value


def cached(
    name: str,
    config: Mapping[str, Any],
    compute: Callable[[], T],
    *,
    folder: str | Path | None = None,
    enabled: bool | None = None,
    smoke: bool | None = None,
    map_location: Any = "cpu",
    verbose: bool = True,
) -> T:
    """``compute()``'s result, loaded from the cache when it holds one for ``config``.

    Args:
        name: what is cached (``"02_runs"``); part of the file name.
        config: everything the result depends on (sizes, epochs, seeds, method options);
            JSON-like values. Two configs give the same file only if their canonical JSON is
            equal (:func:`canonical_json`).
        compute: computes the result (and shows its own progress bar); called only on a miss.
        folder: cache folder (default: :func:`cache_dir`).
        enabled: ``False`` recomputes and overwrites; ``None`` reads ``$SAR_CACHE``.
        smoke: smoke run or not, part of the key (default: :func:`sar.config.smoke_mode`).
        map_location: where loaded tensors go (``torch.load``'s argument); the CPU by default,
            so a result computed on a GPU loads anywhere.
        verbose: print one line saying whether the result was loaded or computed and where.

    Returns:
        The loaded or freshly computed value (a fresh value is returned as ``compute`` gave
        it, not reloaded).

    Raises:
        ValueError: a bad ``name``. TypeError: a config value JSON cannot hold.
    """
    smoke = smoke_mode() if smoke is None else smoke
    path = cache_path(name, config, folder, smoke)
    expected = canonical_json(config, smoke)
    use = cache_enabled() if enabled is None else enabled
    if use and path.is_file():
        found, value = _load(path, expected, map_location)
        if found:
            if verbose:
                print(f"{name}: loaded from {_shown(path)}")
            return value
    value = compute()
    try:
        atomic_torch_save({"format": FORMAT_VERSION, "name": name, "config": expected,
                           "smoke": smoke, "value": value}, path)
    except Exception as err:  # unpicklable value, full disk: keep the result, say why
        warnings.warn(f"{name}: computed but not cached ({type(err).__name__}: {err})",
                      CacheWarning, stacklevel=2)
        return value
    if verbose:
        print(f"{name}: computed and saved to {_shown(path)}")
    return value


def _limit_threads(threads: int) -> None:
    """Worker initialiser: ``threads`` intra-op threads (the parent's environment, e.g.
    ``OMP_NUM_THREADS``, is inherited as it is)."""
    torch.set_num_threads(threads)


def _compute_and_store(name: str, config: Mapping[str, Any], compute: Callable[[], Any],
                       folder: Path, smoke: bool) -> float:
    """Worker: compute one entry and write it (nothing is sent back but the seconds taken)."""
    import time

    start = time.perf_counter()
    cached(name, config, compute, folder=folder, enabled=False, smoke=smoke, verbose=False)
    return time.perf_counter() - start


def cached_in_processes(
    jobs: Sequence[tuple[str, Mapping[str, Any], Callable[[], Any]]],
    *,
    processes: int = 2,
    threads: int = 1,
    folder: str | Path | None = None,
    enabled: bool | None = None,
    smoke: bool | None = None,
    progress: bool = True,
    desc: str = "cache misses",
    verbose: bool = True,
) -> list[Any]:
    """Every ``(name, config, compute)`` of ``jobs`` as :func:`cached` gives it, the cache
    misses computed ``processes`` at a time in fresh (spawned) worker processes.

    Each worker runs ``threads`` intra-op threads, so ``processes=2, threads=1`` keeps two
    cores busy; a result is the same as a one-thread :func:`cached` call in this process
    would compute (seeded code gives the same numbers). The workers write the entries; this
    process then loads every entry, so the values returned are always the stored ones.

    Args:
        jobs: ``(name, config, compute)`` triples as :func:`cached` takes them; ``compute``
            must pickle (a module-level function or a ``functools.partial`` of one, not a
            lambda or a function defined in a notebook) because it is sent to a worker.
        processes: worker processes; ``1`` (or a single miss) computes in this process.
        threads: intra-op threads of each worker (``torch.set_num_threads``).
        folder, enabled, smoke, verbose: as for :func:`cached`.
        progress: a progress bar over the misses (``TQDM_DISABLE`` switches it off).
        desc: the bar's label.

    Returns:
        The values, in the order of ``jobs``.

    Raises:
        Whatever a worker's ``compute`` raised (jobs not yet started are cancelled, the
        running ones finish first).
    """
    smoke = smoke_mode() if smoke is None else smoke
    folder = cache_dir(folder)
    use = cache_enabled() if enabled is None else enabled
    todo = [(name, config, compute) for name, config, compute in jobs
            if not use or not cache_path(name, config, folder, smoke).is_file()]
    if todo and processes > 1 and len(todo) > 1:
        from tqdm.auto import tqdm  # only when there is something to compute

        folder.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")  # no forked copy of a busy parent
        with ProcessPoolExecutor(min(processes, len(todo)), mp_context=context,
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(_compute_and_store, name, config, compute, folder, smoke):
                       cache_path(name, config, folder, smoke) for name, config, compute in todo}
            bar = tqdm(as_completed(futures), total=len(futures), desc=desc, unit="run",
                       disable=not show_progress(progress))
            try:
                seconds = {futures[future]: future.result() for future in bar}
            except BaseException:  # a failed or interrupted job: drop the ones not started
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        values = []
        for name, config, compute in jobs:  # every miss is stored now: load it
            path = cache_path(name, config, folder, smoke)
            fresh = path in seconds and path.is_file()
            values.append(cached(name, config, compute, folder=folder, enabled=True,
                                 smoke=smoke, verbose=verbose and not fresh))
            if verbose and fresh:
                print(f"{name}: computed in a worker process ({seconds[path]:.0f} s) and saved"
                      f" to {_shown(path)}")
        return values
    # one job, one process: each miss computes here
    return [cached(name, config, compute, folder=folder, enabled=use, smoke=smoke,
                   verbose=verbose) for name, config, compute in jobs]


def clear_cache(name: str | None = None, folder: str | Path | None = None) -> list[Path]:
    """Delete the cache files of ``name`` (all configurations), or every cache file; returns
    the deleted paths. Leftover temporary files of interrupted writes go too."""
    root = cache_dir(folder)
    if not root.is_dir():
        return []
    stem = "*" if name is None else name
    paths = [p for p in root.glob(f"{stem}-*.pt") if name is None or _belongs(p, name)]
    paths += list(root.glob(f".{stem}-*.tmp"))
    for path in paths:
        path.unlink(missing_ok=True)
    return sorted(paths)


def _belongs(path: Path, name: str) -> bool:
    """``name-<16 hex>.pt``, so clearing "run" leaves "run-b"'s files alone."""
    return re.fullmatch(re.escape(name) + r"-[0-9a-f]{16}", path.stem) is not None
