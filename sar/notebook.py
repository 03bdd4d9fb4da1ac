"""The setup cell every notebook runs: the figure style, the seed, the default device, and a
one-line banner of versions, device, CPU threads and mode, so a stored output says what it
ran on (the thread count changes the order of floating-point sums, hence the last digits).

    from sar.notebook import setup_notebook

    SEED = 0
    DEVICE = setup_notebook(SEED)
"""

from __future__ import annotations

import torch

from .config import default_device, seed_everything, smoke_mode


def setup_notebook(seed: int = 0, *, verbose: bool = True) -> torch.device:
    """Apply :func:`sar.plots.use_style`, seed Python, NumPy and PyTorch with
    :func:`sar.config.seed_everything` (cuDNN autotuning off) and print
    ``sar <version> | torch <version> | device <device> | threads <n> | smoke mode <bool>``.

    Args:
        seed: the notebook's seed.
        verbose: print the banner.

    Returns:
        :func:`sar.config.default_device`: CUDA when a GPU is visible, else the CPU.
    """
    from . import __version__
    from .plots import use_style  # matplotlib only here, not on `import sar`

    use_style()
    seed_everything(seed)
    device = default_device()
    if verbose:
        print(f"sar {__version__} | torch {torch.__version__} | device {device} | "
              f"threads {torch.get_num_threads()} | smoke mode {smoke_mode()}")
    return device
