"""Distributed data-parallel training on the CPU: two gloo ranks against one process.

The two ranks are forked from the test process (``torch.multiprocessing``, no re-import of
torch, so the ranks start at once) and join the group exactly as under torchrun:
through ``RANK``/``WORLD_SIZE``/``MASTER_*`` and :func:`sar.distributed.init_distributed`.
All runs are in float64, so that the only difference between a 2-rank run and a 1-process run
with the same global batch is the order of float additions (see
:func:`test_two_ranks_train_like_one_process_with_the_global_batch`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import segmentation_models_pytorch  # noqa: F401  imported once here, not again in each fork
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from sar import data as sar_data
from sar import distributed
from sar.config import seed_everything
from sar.distributed import CPUSyncBatchNorm, DistEnv
from sar.models import SARClassifier, SmallCNN
from sar.train import ModelConfig, build_model, fit, load_checkpoint, main

CPU = torch.device("cpu")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_scenes_unet.json"
WORLD, PER_RANK_BATCH, SCENES, EPOCHS = 2, 2, 8, 3  # 2 steps per epoch, 6 steps
# D = 16 (the last decoder width): with D = 8 < C = 11 the anchors take far longer to become
# classifiable and the gate would not open in a short run
TINY_UNET = {"encoder_depth": 3, "decoder_channels": (16, 8, 16)}
SAR_OPTIONS = {"update_conf": 0.2, "momentum": 0.9, "trade_off_ce": 3.0}
# with 4 warm-up steps of the anchor branch (see tiny_model) the gate opens at step 2 of 6,
# closes at 3 and passes again at 4 and 5: the EMA's first copy, its blending and the pull all
# happen on both ranks, and the resumed epoch starts from an open gate (checked below)
WARM_STEPS = 4
FIT = {"lr": 0.1, "schedule": "constant", "warmup_steps": 2, "device": CPU, "progress": False}
# float64: each run differs from the other only by summation order, ~1e-16 relative per op;
# six SGD steps grow that to ~5e-15 (measured). A semantic slip (local BN statistics, a wrong
# gradient scale, another sample order) moves weights by far more: the local-BN control below
# is off by ~0.2 after two steps. 1e-9 sits orders of magnitude from both.
WEIGHT_TOLERANCE = 1e-9
TIME_LIMIT_S = 240



# ------------------------------------------------------------------------------ helpers
def tiny_scenes() -> TensorDataset:
    """8 float64 scenes of 32x32 with 11 classes, from synthetic sources (no download)."""
    g = torch.Generator().manual_seed(0)
    sources = torch.randint(0, 256, (40, 28, 28), generator=g, dtype=torch.uint8)
    scenes = sar_data.make_fashion_scenes(SCENES, size=32, images=sources,
                                          labels=torch.arange(40) % 10, seed=0)
    return TensorDataset(scenes.images.double(), scenes.masks)


def tiny_model(seed: int = 0) -> nn.Module:
    """A float64 SAR Unet whose every parameter is used (DDP all-reduces them all)."""
    seed_everything(seed)
    model = build_model(ModelConfig(kwargs=TINY_UNET), SAR_OPTIONS, num_classes=11)
    for stage in ("layer3", "layer4"):  # smp keeps them at encoder_depth=3 but never runs them
        delattr(model.model.encoder, stage)
    return warm_anchor_branch(model.double())


def warm_anchor_branch(model: nn.Module) -> nn.Module:
    """Train the projector and head on the anchor CE alone for a few steps, then close the gate
    again: the anchors start nearly classifiable, so a 6-step run sees the gate open."""
    reg = model.regularizer
    opt = torch.optim.SGD([*reg.projector.parameters(), *model.classifier.parameters()],
                          lr=0.1, momentum=0.9)
    no_pixel = torch.full((1, 1, 1), 255)  # only the anchor branch takes part
    features = torch.zeros(1, reg.feat_dim, 1, 1, dtype=torch.float64)
    for _ in range(WARM_STEPS):
        opt.zero_grad()
        reg(features, no_pixel, model.classifier)["anchor_ce"].backward()
        opt.step()
    for buffer in (reg.semantic_anchors, reg.gate_opened, reg.num_updates):
        buffer.zero_()
    return model


def run_fit(env: DistEnv, dataset: TensorDataset, *, seed: int = 0, epochs: int = EPOCHS,
            sync_batchnorm: bool = True, checkpoint: Path | None = None, resume: bool = False,
            record: list[dict[str, Any]] | None = None, keep_epoch: int | None = None,
            ) -> dict[str, Any]:
    """``fit`` on this rank's shard (per-rank batch ``WORLD * PER_RANK_BATCH / world``).

    Returns the final state, the history and the state after each epoch; with
    ``keep_epoch``, rank 0 also copies the checkpoint of that epoch to ``epoch<k>.pt``.
    """
    model = tiny_model(seed)
    # no per-forward buffer broadcast: nothing but the seeds keeps SAR's state in step
    wrapped = distributed.prepare_model(model, env, sync_batchnorm=sync_batchnorm,
                                        sync_buffers=False)
    if record is not None:
        model.regularizer.register_forward_hook(lambda m, _a, out: record.append(compare(m, out)))
    snapshots: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(epoch: int, _model: nn.Module) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        if epoch == keep_epoch and env.is_main:
            shutil.copy(checkpoint, checkpoint.with_name(f"epoch{epoch}.pt"))

    batch = PER_RANK_BATCH * WORLD // env.world_size
    loader = distributed.distributed_loader(dataset, batch, env=env, seed=0)
    history = fit(wrapped, loader, epochs=epochs, checkpoint=checkpoint, resume=resume,
                  on_epoch_end=on_epoch_end, **FIT)
    return {"state": model.state_dict(), "history": history, "snapshots": snapshots}


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's value of ``tensor`` (a plain all_gather: the test trusts no helper)."""
    sent = tensor.detach().to(torch.float64)
    out = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
    dist.all_gather(out, sent)
    return out


def compare(reg: nn.Module, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Right after the regulariser's forward on each rank: is its state the same everywhere?"""
    # pull (and loss = anchor_ce + pull) is each rank's own: it measures that rank's features
    shared = {key: value for key, value in out.items() if key not in ("pull", "loss")}
    state = {"anchors": reg.anchors, "semantic_anchors": reg.semantic_anchors,
             "gate_opened": reg.gate_opened, "num_updates": reg.num_updates,
             **{f"out.{key}": value for key, value in shared.items()}}
    differ = []
    for name, value in state.items():
        values = gathered(value)
        if not all(torch.equal(v, values[0]) for v in values):
            differ.append(name)
    keys: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(keys, list(out))
    return {"differ": differ, "keys": keys, "gate_opened": bool(reg.gate_opened),
            "num_updates": int(reg.num_updates), "pull": out["pull"].item()}


def rank_main(rank: int, port: int, dataset: TensorDataset, out: Path) -> None:
    """One rank: the environment torchrun would set, then every distributed run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = distributed.init_distributed("cpu")
    try:
        record: list[dict[str, Any]] = []
        results = {"env": env, "record": record}
        results["straight"] = run_fit(env, dataset, record=record, checkpoint=out / "run.pt",
                                      keep_epoch=EPOCHS - 1)
        # exact resume: a fresh model (other init, other RNG state) resumes the checkpoint
        # that rank 0 wrote after the next-to-last epoch and finishes the run
        torch.manual_seed(1000 + rank)
        results["resumed"] = run_fit(env, dataset, seed=2, checkpoint=out / f"epoch{EPOCHS - 1}.pt",
                                     resume=True)
        # the control: local BN statistics, one epoch
        results["local_bn"] = run_fit(env, dataset, epochs=1, sync_batchnorm=False)
        results["diverged"] = diverge_on_rank_1(env, dataset)
        # the helper that run() calls after training, on a state in sync and one that is not
        results["out_of_sync"] = (
            distributed.out_of_sync(tiny_model().regularizer.state_dict()),
            distributed.out_of_sync({"same": torch.ones(2), "rank": torch.tensor([rank])}))
        results["checkpoint"] = out / "run.pt"
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


def diverge_on_rank_1(env: DistEnv, dataset: TensorDataset) -> str:
    """Rank 1 reads NaN images: every rank must stop at the same step, with one message."""
    images, masks = dataset.tensors
    if env.rank == 1:
        images = torch.full_like(images, math.nan)
    try:
        run_fit(env, TensorDataset(images, masks), epochs=1)
    except FloatingPointError as err:
        return str(err)
    return "no error"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(fn: Any, *args: Any) -> None:
    """Fork WORLD ranks running ``fn(rank, *args)``; kill them all past the time limit."""
    # fork: the ranks start in milliseconds with torch and smp already imported; but a process
    # that has used CUDA cannot be forked, so fall back to spawn there (slower, same result)
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method=method)
    deadline = time.monotonic() + TIME_LIMIT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish in {TIME_LIMIT_S}s")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    launch(rank_main, free_port(), tiny_scenes(), out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    """The reference: one process, batch ``WORLD * PER_RANK_BATCH``, same data order."""
    return run_fit(DistEnv(), tiny_scenes())


# -------------------------------------------------------------------------------- tests
def test_ranks_join_like_under_torchrun(ranks) -> None:
    assert [r["env"].rank for r in ranks] == [0, 1]
    assert all(r["env"].world_size == WORLD and r["env"].backend == "gloo" for r in ranks)


def test_ranks_agree_on_anchors_gate_ema_and_loss_keys_at_every_step(ranks) -> None:
    record = ranks[0]["record"]
    assert len(record) == EPOCHS * SCENES // (WORLD * PER_RANK_BATCH) == 6
    for step, row in enumerate(record):
        assert row["differ"] == [], f"step {step}: {row['differ']} differ between ranks"
        assert row["keys"][0] == row["keys"][1], step
    # the check is worth something only if the gate opened and the EMA and pull ran
    assert not record[0]["gate_opened"] and record[-1]["gate_opened"]
    assert record[-1]["num_updates"] >= 2 and any(row["pull"] > 0 for row in record)
    # and every rank ended with the same weights and buffers
    assert max_difference(ranks[0]["straight"]["state"], ranks[1]["straight"]["state"]) == 0


def test_two_ranks_train_like_one_process_with_the_global_batch(ranks, one_process) -> None:
    straight = ranks[0]["straight"]
    gaps = [max_difference(a, b) for a, b in zip(straight["snapshots"],
                                                  one_process["snapshots"], strict=True)]
    assert max(gaps) < WEIGHT_TOLERANCE, gaps  # after every epoch, not only at the end
    # logged values are averaged over ranks: the global batch's loss, in float32
    pd.testing.assert_frame_equal(straight["history"], one_process["history"], rtol=1e-6)
    # the control: without SyncBN each rank normalises with its own batch statistics
    control = max_difference(ranks[0]["local_bn"]["state"], one_process["snapshots"][0])
    assert control > 1e3 * WEIGHT_TOLERANCE, control


def test_out_of_sync_names_exactly_the_tensors_that_differ(ranks) -> None:
    assert all(rank["out_of_sync"] == ([], ["rank"]) for rank in ranks)


def test_distributed_resume_is_exact(ranks) -> None:
    for rank in ranks:
        assert max_difference(rank["resumed"]["state"], rank["straight"]["state"]) == 0
        pd.testing.assert_frame_equal(rank["resumed"]["history"], rank["straight"]["history"])


def test_a_diverging_rank_stops_every_rank_with_one_message(ranks) -> None:
    messages = [rank["diverged"] for rank in ranks]
    assert messages[0] == messages[1]
    # SyncBN spreads rank 1's NaN to every rank's features; the first failing rank is named
    assert messages[0].startswith("non-finite loss at step 0 (epoch 0, lr 0.05): on rank 0,"
                                  " features contain NaN or Inf")


def test_resuming_on_another_number_of_ranks_warns(ranks) -> None:
    with pytest.warns(UserWarning, match=r"the checkpoint holds RNG states of 2 rank\(s\), this"
                      r" run has 1: every rank restarts from rank 0's, so the resumed run is not"
                      r" bit-exact"):
        state = load_checkpoint(ranks[0]["checkpoint"], tiny_model())
    assert state["epoch"] == EPOCHS  # the weights load all the same


def test_sync_batchnorm_converts_the_network_but_not_the_projector() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    distributed.convert_sync_batchnorm(model, CPU)
    network_bns = [m for m in model.model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert network_bns and all(isinstance(m, CPUSyncBatchNorm) for m in network_bns)
    projector_bns = [m for m in model.regularizer.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(projector_bns) == 3 and not any(isinstance(m, CPUSyncBatchNorm)
                                               for m in model.regularizer.modules())
    assert max_difference(before, model.state_dict()) == 0  # same keys, same values
    assert model.head is model.model.segmentation_head  # the tapped head is still the one used


def entry_point_args(out: Path, epochs: int) -> list[str]:
    """The shipped fashion-scenes config, shrunk to a few seconds."""
    tiny = json.dumps({"encoder_depth": 3, "decoder_channels": [16, 8, 8]})
    return ["--config", str(CONFIG), "--output-dir", str(out), "--set", "data.num_train=8",
            "data.num_val=4", "data.size=32", "train.batch_size=4", f"train.epochs={epochs}",
            "train.log_every=1", f"model.kwargs={tiny}"]


@pytest.mark.skipif(sar_data.find_fashion_mnist("train") is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_entry_point_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(entry_point_args(out, epochs=1)) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "history.csv",
                                                "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and len(metrics["per_class_iou"]) == 11
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and {"anchor_ce", "pull", "gate_opened"} <= set(history.columns)
    # the same command with more epochs continues from the checkpoint
    assert main(entry_point_args(out, epochs=2)) == 0
    model = build_model(ModelConfig(kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 8)}),
                        {}, num_classes=11)
    state = load_checkpoint(out / "checkpoint.pt", model, restore_rng=False)
    assert state["epoch"] == 2 and state["step"] == 4
    assert pd.read_csv(out / "history.csv")["step"].tolist() == [0, 1, 2, 3]


def test_entry_point_rejects_an_unknown_config_key(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIG), "--set", "train.epoch=3"])
    assert exit_info.value.code == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err


# ------------------------------------------------------------------------ mixed precision
def bf16_loop(autocast: bool, steps: int = 12, device: torch.device = CPU,
              ) -> tuple[list[float], list[float], SARClassifier]:
    """A fit-like loop (forward, CE + SAR loss, SGD) with or without bf16 autocast."""
    torch.manual_seed(0)
    model = SARClassifier(SmallCNN(num_classes=4, in_channels=1, width=8, feat_dim=16),
                          update_conf=0.5, momentum=0.9).train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 4
    images = 0.3 * torch.randn(16, 1, 12, 12, generator=g)
    for i, c in enumerate(labels.tolist()):  # class c lights up quadrant c
        images[i, 0, 6 * (c // 2):6 * (c // 2) + 6, 6 * (c % 2):6 * (c % 2) + 6] += 1.0
    images, labels = images.to(device), labels.to(device)
    gates, losses = [], []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, reg = model(images, labels)
            loss = F.cross_entropy(logits, labels) + reg["loss"]
        assert reg["anchor_ce"].dtype == torch.float32  # the anchor branch stays in float32
        opt.zero_grad()
        loss.backward()
        opt.step()
        gates.append(float(reg["gate_passed"]))
        losses.append(loss.item())
    return gates, losses, model


def test_bf16_autocast_keeps_the_gate_of_float32(device: torch.device) -> None:
    gates32, losses32, model32 = bf16_loop(autocast=False, device=device)
    gates16, losses16, model16 = bf16_loop(autocast=True, device=device)
    assert all(math.isfinite(v) for v in losses16)
    assert 0.0 in gates32 and 1.0 in gates32  # the gate opens during the loop
    assert gates16 == gates32
    assert int(model16.regularizer.num_updates) == int(model32.regularizer.num_updates)
    # bf16 keeps 8 bits of mantissa: the anchors agree to a few per cent, not to float32
    ema16, ema32 = model16.regularizer.semantic_anchors, model32.regularizer.semantic_anchors
    assert torch.isfinite(ema16).all()
    assert float((ema16 - ema32).norm() / ema32.norm()) < 0.05
