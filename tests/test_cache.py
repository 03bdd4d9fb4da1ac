"""Tests for sar.cache: hits, misses on config changes, corrupt files, atomic writes, smoke."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from sar import cache as C


class Counter:
    """A compute function that counts its calls and returns a fresh result each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"weights": torch.full((3,), float(self.calls)),
                "table": pd.DataFrame({"epoch": [1, 2], "acc": [0.5, 0.25 * self.calls]})}


@pytest.fixture(autouse=True)
def _cache_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (C.CACHE_ENV, C.CACHE_DIR_ENV, "SAR_SMOKE", "CI"):
        monkeypatch.delenv(name, raising=False)


def test_second_call_loads_what_the_first_computed(tmp_path: Path) -> None:
    compute = Counter()
    config = {"method": "sar", "epochs": 3, "sizes": (10, 20)}
    first = C.cached("run", config, compute, folder=tmp_path)
    second = C.cached("run", dict(reversed(config.items())), compute, folder=tmp_path)
    assert compute.calls == 1  # key order does not matter
    assert torch.equal(second["weights"], first["weights"])
    pd.testing.assert_frame_equal(second["table"], first["table"])
    assert [p.name for p in tmp_path.iterdir()] == [C.cache_path("run", config, tmp_path).name]


def test_a_changed_config_computes_again_and_keeps_both(tmp_path: Path) -> None:
    compute = Counter()
    a = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    b = C.cached("run", {"epochs": 4}, compute, folder=tmp_path)
    assert compute.calls == 2 and not torch.equal(a["weights"], b["weights"])
    assert C.cached("run", {"epochs": 3}, compute, folder=tmp_path)["weights"][0] == 1.0
    assert compute.calls == 2 and len(list(tmp_path.glob("run-*.pt"))) == 2


def test_the_stored_config_is_checked_not_only_the_file_name(tmp_path: Path) -> None:
    compute = Counter()
    C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    # a file under the right name that holds another configuration (an edit, a collision)
    other = C.cache_path("run", {"epochs": 4}, tmp_path)
    C.cached("run", {"epochs": 4}, compute, folder=tmp_path)
    other.replace(C.cache_path("run", {"epochs": 3}, tmp_path))
    with pytest.warns(C.CacheWarning, match="another configuration"):
        value = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    assert compute.calls == 3 and value["weights"][0] == 3.0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_corrupt_file_is_recomputed_with_a_warning(tmp_path: Path, damage: str) -> None:
    compute = Counter()
    C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    path = C.cache_path("run", {"epochs": 3}, tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    else:
        torch.save({"weights": torch.zeros(3)}, path)  # readable, but not a cache entry
    with pytest.warns(C.CacheWarning, match="unreadable"):
        value = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    assert compute.calls == 2 and value["weights"][0] == 2.0
    assert C.cached("run", {"epochs": 3}, compute, folder=tmp_path)["weights"][0] == 2.0
    assert compute.calls == 2  # the rewritten file is good


def test_an_interrupted_write_leaves_the_old_file_and_no_debris(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compute = Counter()
    C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    before = C.cache_path("run", {"epochs": 3}, tmp_path).read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, file):
        real_save(obj, file)
        file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(C.torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        C.cached("run", {"epochs": 3}, compute, folder=tmp_path, enabled=False)
    with pytest.raises(KeyboardInterrupt):
        C.cached("run", {"epochs": 5}, compute, folder=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        C.cache_path("run", {"epochs": 3}, tmp_path).name]  # no temporary file, no new entry
    assert C.cache_path("run", {"epochs": 3}, tmp_path).read_bytes() == before


def test_a_result_that_cannot_be_saved_is_still_returned(tmp_path: Path) -> None:
    with pytest.warns(C.CacheWarning, match="computed but not cached"):
        value = C.cached("run", {"epochs": 3}, lambda: {"f": lambda: 1}, folder=tmp_path)
    assert value["f"]() == 1 and not list(tmp_path.iterdir())


def test_smoke_and_full_runs_use_separate_files(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    compute = Counter()
    full = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    monkeypatch.setenv("SAR_SMOKE", "1")  # the smoke flag is read on every call
    smoke = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    assert compute.calls == 2 and smoke["weights"][0] == 2.0
    assert C.cache_path("run", {"epochs": 3}, tmp_path, smoke=True) != C.cache_path(
        "run", {"epochs": 3}, tmp_path, smoke=False)
    monkeypatch.delenv("SAR_SMOKE")
    again = C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    assert compute.calls == 2 and torch.equal(again["weights"], full["weights"])


def test_sar_cache_0_or_enabled_false_recomputes_and_refreshes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compute = Counter()
    C.cached("run", {"epochs": 3}, compute, folder=tmp_path)
    assert C.cached("run", {"epochs": 3}, compute, folder=tmp_path, enabled=False)[
        "weights"][0] == 2.0
    monkeypatch.setenv(C.CACHE_ENV, "0")
    assert C.cached("run", {"epochs": 3}, compute, folder=tmp_path)["weights"][0] == 3.0
    monkeypatch.setenv(C.CACHE_ENV, "1")
    assert C.cached("run", {"epochs": 3}, compute, folder=tmp_path)["weights"][0] == 3.0
    assert compute.calls == 3


def test_folder_from_environment_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(C.CACHE_DIR_ENV, str(tmp_path / "env"))
    compute = Counter()
    C.cached("run", {"epochs": 1}, compute)
    assert "computed and saved to" in capsys.readouterr().out
    C.cached("run", {"epochs": 1}, compute)
    assert "loaded from" in capsys.readouterr().out
    C.cached("run-b", {"epochs": 1}, compute, verbose=False)
    assert capsys.readouterr().out == ""
    assert len(list((tmp_path / "env").glob("*.pt"))) == 2
    assert [p.name for p in C.clear_cache("run")] == [C.cache_path("run", {"epochs": 1}).name]
    assert [p.name.split("-")[1] for p in C.clear_cache()] == ["b"]
    assert C.clear_cache() == [] and C.clear_cache(folder=tmp_path / "missing") == []


def test_bad_names_and_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache name"):
        C.cached("../escape", {}, Counter(), folder=tmp_path)
    with pytest.raises(TypeError, match="JSON-like"):
        C.cached("run", {"model": torch.nn.Linear(2, 2)}, Counter(), folder=tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_default_folder_is_git_ignored() -> None:
    repo = Path(C.__file__).resolve().parents[1]
    probe = C.DEFAULT_CACHE_DIR / "run-0123456789abcdef.pt"
    try:
        done = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo,
                              capture_output=True)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, f"{probe} would be committed: add it to .gitignore"


def test_atomic_save_gives_the_usual_file_permissions(tmp_path: Path) -> None:
    from sar.files import atomic_torch_save

    path = atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "w.pt")
    reference = tmp_path / "plain.pt"
    torch.save({"x": torch.zeros(2)}, reference)
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    assert not list(tmp_path.glob(".*.tmp"))


def test_messages_name_the_default_folder_relative_to_the_repository(monkeypatch, capsys):
    # stored notebook outputs must not carry the path of the machine that ran them
    monkeypatch.delenv("SAR_CACHE_DIR", raising=False)
    name = "test_relative_message"
    for path in C.DEFAULT_CACHE_DIR.glob(f"{name}-*"):
        path.unlink()
    try:
        C.cached(name, {"x": 1}, lambda: 1, smoke=True)
        C.cached(name, {"x": 1}, lambda: 1, smoke=True)
        out = capsys.readouterr().out
        assert f"saved to data/cache/{name}-" in out and f"loaded from data/cache/{name}-" in out
        assert str(C.DEFAULT_CACHE_DIR) not in out
    finally:
        for path in C.DEFAULT_CACHE_DIR.glob(f"{name}-*"):
            path.unlink()


def test_cached_in_processes_computes_the_misses_in_one_thread_workers_then_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    jobs = [("threads", {"job": k}, torch.get_num_threads) for k in range(3)]
    monkeypatch.setenv(C.CACHE_ENV, "0")  # recompute: the workers overwrite, this loads
    C.cached_in_processes(jobs, processes=2, folder=tmp_path, smoke=False, progress=False)
    monkeypatch.delenv(C.CACHE_ENV)
    first = C.cached_in_processes(jobs, processes=2, threads=1, folder=tmp_path, smoke=False,
                                  progress=False, enabled=False)
    assert first == [1, 1, 1]  # computed in workers limited to one thread each
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 6 and all("computed in a worker process" in line for line in said)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == sorted(
        C.cache_path(name, config, tmp_path, smoke=False).name for name, config, _ in jobs)
    # a second call loads every entry; this compute would raise if it were called
    fails = functools.partial(int, "not a number")
    again = C.cached_in_processes([(n, c, fails) for n, c, _ in jobs], folder=tmp_path,
                                  smoke=False, progress=False)
    assert again == first
    assert capsys.readouterr().out.count("loaded from") == 3
    # a miss among hits: only it is computed (here in this process: one miss, no pool)
    mixed = C.cached_in_processes([*jobs[:2], ("sum", {"job": 9}, functools.partial(sum, [2, 3]))],
                                  folder=tmp_path, smoke=False, progress=False)
    assert mixed == [1, 1, 5]


def test_cached_in_processes_raises_what_a_worker_raised(tmp_path: Path) -> None:
    import functools

    jobs = [("bad", {"job": k}, functools.partial(int, "not a number")) for k in range(2)]
    with pytest.raises(ValueError, match="not a number"):
        C.cached_in_processes(jobs, processes=2, folder=tmp_path, smoke=False, progress=False)
    assert not list(tmp_path.glob("*.pt"))
