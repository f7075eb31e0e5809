"""Training with ``torch.nn.parallel.DistributedDataParallel`` on the CPU: a small float64 model built on
our operators (a convolution, ``DeformConv2d`` with offsets from a convolution, ``roi_align`` and a
linear head) trained for a few SGD steps by two gloo processes, each on half of a fixed batch and
compiling into one fresh, shared Numba kernel cache, ends with the same parameters on both ranks,
equal to those of one process trained on the whole batch (to rounding: the all-reduce adds in another
order). The single process then loads the kernels the two ranks cached."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# argv: output path; RANK, WORLD_SIZE (1: no process group, no DDP), MASTER_ADDR, MASTER_PORT in the env
TRAIN = """
import datetime, os, sys
import torch
import numba_droi.torch as droi

torch.set_num_threads(1)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
IMAGES, BOXES_PER_IMAGE, STEPS, LR = 4, 2, 3, 0.1


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.offset = torch.nn.Conv2d(4, 2 * 3 * 3, 3, padding=1)
        self.deform = droi.DeformConv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 2 * 2, 3)

    def forward(self, images, boxes):
        x = torch.relu(self.conv(images))
        x = torch.relu(self.deform(x, self.offset(x)))
        x = droi.roi_align(x, boxes, (2, 2), 0.5, 2, True)
        return self.head(x.flatten(1))


torch.manual_seed(0)
model = Model().double()
generator = torch.Generator().manual_seed(1)
images = torch.randn(IMAGES, 3, 12, 12, dtype=torch.float64, generator=generator)
corners = torch.rand(IMAGES, BOXES_PER_IMAGE, 2, dtype=torch.float64, generator=generator) * 12
sizes = 2 + torch.rand(IMAGES, BOXES_PER_IMAGE, 2, dtype=torch.float64, generator=generator) * 10
targets = torch.randn(IMAGES, BOXES_PER_IMAGE, 3, dtype=torch.float64, generator=generator)
initial = {name: p.detach().clone() for name, p in model.named_parameters()}

local = IMAGES // world
mine = slice(rank * local, (rank + 1) * local)
index = torch.arange(local, dtype=torch.float64)[:, None, None].expand(local, BOXES_PER_IMAGE, 1)
boxes = torch.cat([index, corners[mine], corners[mine] + sizes[mine]], dim=2).reshape(-1, 5)
images, targets = images[mine], targets[mine].reshape(-1, 3)

trained = model
if world > 1:
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    trained = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(trained.parameters(), lr=LR)
losses = []
for step in range(STEPS):
    optimizer.zero_grad()
    loss = ((trained(images, boxes) - targets) ** 2).mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
torch.save({"parameters": dict(model.named_parameters()), "initial": initial, "losses": losses},
           sys.argv[1])
if world > 1:
    torch.distributed.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script, output, rank, world, port, cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="1",
               RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log = open(output.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, str(script), str(output)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT), log


def finish(processes, timeout=600):
    """Wait for the processes; the tail of each one's log if any failed or ran past ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        for process, log in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        pass
    for process, log in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    if any(process.returncode for process, log in processes):
        return "\n".join(f"--- {log.name} (exit {process.returncode}):\n"
                         f"{pathlib.Path(log.name).read_text()[-3000:]}" for process, log in processes)
    return None


def test_ddp_training_on_two_processes_equals_training_on_the_whole_batch(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is unavailable")
    script, cache, port = tmp_path / "train.py", tmp_path / "numba_cache", free_port()
    script.write_text(TRAIN)
    ranks = [start(script, tmp_path / f"rank{rank}.pt", rank, 2, port, cache) for rank in range(2)]
    failure = finish(ranks)
    assert failure is None, failure
    assert any(cache.rglob("*.nbc")), "the ranks cached no kernels"
    failure = finish([start(script, tmp_path / "single.pt", 0, 1, port, cache)])
    assert failure is None, failure

    first, second, single = (torch.load(tmp_path / f"{name}.pt") for name in ("rank0", "rank1", "single"))
    assert first["parameters"].keys() == single["parameters"].keys()
    for name, expected in single["parameters"].items():
        ours = first["parameters"][name]
        assert torch.equal(ours, second["parameters"][name]), f"{name} differs between the ranks"
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12,
                                   msg=lambda message: f"{name}: {message}")
        assert not torch.equal(expected, single["initial"][name]), f"{name} did not train"
    mean = [(a + b) / 2 for a, b in zip(first["losses"], second["losses"])]
    assert mean == pytest.approx(single["losses"], rel=1e-10)
    assert single["losses"][-1] < single["losses"][0]
