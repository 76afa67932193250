"""DistributedDataParallel with the modules: 2 processes, gloo, localhost.

The modules are plain nn.Modules whose parameters are ordinary Parameters, so
DDP's gradient all-reduce needs nothing from them. With the loss a mean over
the batch and each rank holding half of it, DDP's averaged gradient is
(1/2)(g_rank0 + g_rank1) = the full-batch gradient, so a few SGD steps must
end at the parameters of single-process training on the whole batch. The
two differ only in summation order (per-rank sums, then the all-reduce), so
in float64 they agree to ~1e-15 relative; rtol 1e-10 leaves a wide margin
and would still catch a gradient that was not averaged (a 2x error).
"""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import atrous_cuda

WORLD_SIZE = 2
STEPS = 3
BATCH = 8


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        atrous_cuda.AtrousConv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(),
        atrous_cuda.AtrousConv2d(8, 8, 3, padding="same", stride=2, dilation=3, groups=2), nn.ReLU(),
        atrous_cuda.AtrousConv2d(8, 1, 1),
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(STEPS, BATCH, 3, 12, 12, generator=g, dtype=torch.float64),
            torch.randn(STEPS, BATCH, 1, 6, 6, generator=g, dtype=torch.float64))


def _train(model, xs, ys):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


def _worker(rank, port, result_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        xs, ys = _data()
        share = BATCH // WORLD_SIZE
        part = slice(rank * share, (rank + 1) * share)
        ddp = nn.parallel.DistributedDataParallel(_model())
        _train(ddp, xs[:, part], ys[:, part])
        if rank == 0:
            torch.save(ddp.module.state_dict(), result_path)
        # Both ranks tear gloo down together: a rank that exits while the other
        # still has a connection open to it can make the other abort ("terminate
        # called without an active exception", seen once in a loaded CI run).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform != "linux", reason="spawns processes that talk over localhost TCP (tested on Linux)")
def test_ddp_two_processes_match_single_process_full_batch(tmp_path):
    result_path = str(tmp_path / "ddp_state.pt")
    mp.spawn(_worker, args=(_free_port(), result_path), nprocs=WORLD_SIZE, join=True)
    ddp_state = torch.load(result_path)

    xs, ys = _data()
    single = _train(_model(), xs, ys).state_dict()
    initial = _model().state_dict()
    assert ddp_state.keys() == single.keys()
    for key in single:
        assert not torch.equal(single[key], initial[key]), f"{key} never moved: the test would prove nothing"
        torch.testing.assert_close(ddp_state[key], single[key], rtol=1e-10, atol=1e-12, msg=lambda m: f"{key}: {m}")
