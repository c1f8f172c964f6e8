"""PyTorch DistributedDataParallel training throughput: the reference for
basin's data-parallel step (bench/ddp/run.sh runs both).

Start it under mpirun, one process per rank:

    mpirun -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 \\
        /usr/bin/python3 bench/ddp/torch_ddp.py --model mlp --batch 64 --port 29511

Debian's torchrun does not start on Python 3.11, so the rank, world size and
local rank come from Open MPI's OMPI_COMM_WORLD_* variables (RANK /
WORLD_SIZE, when set, win), and the gloo rendezvous is a TCP store on
127.0.0.1:--port. With no MPI variables at all it runs as one rank.

Each rank trains the model of bench/step/torch_step.py (same definitions) on
its own batch of --batch random 1x28x28 images already in memory (throughput
is what counts here, and it leaves data reading out of PyTorch's time), with
SGD (momentum 0.9, weight decay 5e-4) and DDP's default gradient buckets.
After --warmup steps, --repeats windows of --steps steps are timed between
barriers; a window's rate is (ranks x batch x steps) / (the slowest rank's
wall time). Rank 0 prints the median, and last a JSON line.

Thread counts are fixed through the environment before torch is imported:
OpenMP and OpenBLAS read it when they load, so torch.set_num_threads alone
leaves their pools at the machine's core count.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_models import build, positive  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(
        description="Time PyTorch DDP training steps (gloo, CPU), one process per rank.")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--batch", type=positive(1), default=64, help="samples per rank and step")
    p.add_argument("--steps", type=positive(1), default=40, help="timed steps per window")
    p.add_argument("--repeats", type=positive(1), default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=positive(0), default=10, help="untimed steps first")
    p.add_argument("--threads", type=positive(1), default=1, help="intra-op threads per rank")
    p.add_argument("--port", type=positive(1), default=29511, help="TCP port of the rendezvous")
    p.add_argument("--lr", type=float, default=0.01)
    return p.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402  (after the thread environment is set)
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402


def rank_and_world():
    e = os.environ
    rank = int(e.get("RANK", e.get("OMPI_COMM_WORLD_RANK", "0")))
    world = int(e.get("WORLD_SIZE", e.get("OMPI_COMM_WORLD_SIZE", "1")))
    return rank, world


def main():
    rank, world = rank_and_world()
    torch.set_num_threads(ARGS.threads)
    store = dist.TCPStore("127.0.0.1", ARGS.port, world, rank == 0,
                          timeout=datetime.timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)

    torch.manual_seed(42)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    net = DDP(build(ARGS.model))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=ARGS.lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1234 + rank)
    x = torch.rand(ARGS.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (ARGS.batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(ARGS.warmup):
        loss = step()
    wall, cpu = [], []
    for _ in range(ARGS.repeats):
        dist.barrier()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(ARGS.steps):
            loss = step()
        dist.barrier()
        t = torch.tensor([time.perf_counter() - w0, time.process_time() - c0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        images = world * ARGS.batch * ARGS.steps
        wall.append(images / t[0].item())
        cpu.append(images / t[1].item())

    img_wall, img_cpu = statistics.median(wall), statistics.median(cpu)
    if rank == 0:
        print(f"torch {torch.__version__} ({sys.executable}), DDP gloo, {world} ranks, "
              f"model {ARGS.model}, batch {ARGS.batch} per rank, {torch.get_num_threads()} threads")
        print(f"warm-up {ARGS.warmup} steps, then {ARGS.repeats} windows of {ARGS.steps} steps; "
              f"medians (min..max), all ranks:")
        print(f"  by wall time {img_wall:9.1f} img/s ({min(wall):.1f}..{max(wall):.1f})")
        print(f"  by CPU time  {img_cpu:9.1f} img/s (slowest rank's CPU seconds)")
        print(f"last loss {loss.item():.4f}")
        print(json.dumps({
            "bench": "ddp", "impl": "torch", "model": ARGS.model, "batch": ARGS.batch,
            "ranks": world, "threads": torch.get_num_threads(), "warmup": ARGS.warmup,
            "steps": ARGS.steps, "repeats": ARGS.repeats,
            "img_s_wall": round(img_wall, 3), "img_s_cpu": round(img_cpu, 3),
            "torch": torch.__version__,
        }, separators=(",", ":")))
    # destroy_process_group can hang at exit with gloo here (the rank that
    # hosts the TCP store leaving first); every result is printed by now, so
    # the ranks meet once more and leave without tearing the group down.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
