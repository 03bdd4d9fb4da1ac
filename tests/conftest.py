import os
import sys
from pathlib import Path

import pytest
import torch

# the reference implementation lives beside the tests
sys.path.insert(0, str(Path(__file__).parent))

DEVICE_ENV = "SAR_TEST_DEVICE"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"device: runs on ${DEVICE_ENV} (default cpu); given to every test that takes"
        " the `device` fixture, so `SAR_TEST_DEVICE=cuda pytest -m device` reruns them on a GPU")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # slow tests run only when asked for by marker (pytest -m slow), as pyproject says
    run_slow = "slow" in (config.getoption("markexpr") or "")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with pytest -m slow"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, which thrash on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the network: a missing dataset raises instead of downloading (a test
    of the download path passes ``download=True`` and fakes torchvision)."""
    monkeypatch.setenv("SAR_DOWNLOAD", "0")


@pytest.fixture
def device() -> torch.device:
    """The device named by ``$SAR_TEST_DEVICE`` (default ``cpu``).

    On CUDA, cuDNN autotuning is off and PyTorch picks deterministic kernels where it has them
    (``warn_only``: an op without one warns instead of failing), so the bitwise assertions mean
    on a GPU what they mean on the CPU.
    """
    chosen = torch.device(os.environ.get(DEVICE_ENV, "cpu"))
    if chosen.type != "cuda":
        yield chosen
        return
    if not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_ENV}={chosen} but no CUDA device is visible")
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield chosen
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
