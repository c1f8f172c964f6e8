#!/usr/bin/python3
"""PyTorch reference for basin-bench-step: the same models, the same step.

A step is forward, CrossEntropyLoss (mean over the batch), backward and
SGD(momentum 0.9, weight decay 5e-4) on random data built once, timed like
basin-bench-step: warm-up steps, then repeats of timed steps, the median of
the repeats reported by CPU time and by wall time. The last line of output
is one JSON object.

Run it with Debian's interpreter (/usr/bin/python3, python3-torch). Thread
counts are fixed through the environment before torch is imported: OpenMP
and OpenBLAS read it when they load, so torch.set_num_threads alone leaves
their pools at the machine's core count.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_models import MODELS, build, positive, shape  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(
        description="Time full PyTorch training steps (forward + backward + SGD) on one process.")
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--input", type=shape, default=(1, 28, 28), metavar="CxHxW",
                   help="shape of one input image (default 1x28x28)")
    p.add_argument("--classes", type=positive(2), default=10, help="classes (default 10)")
    p.add_argument("--batch", type=positive(1), default=64, help="samples per step")
    p.add_argument("--steps", type=positive(1), default=20, help="timed steps per repeat")
    p.add_argument("--repeats", type=positive(1), default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=positive(0), default=3, help="untimed steps first")
    p.add_argument("--threads", type=positive(1), default=1, help="intra-op threads")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the model on GPU 0, the batch copied from host memory every step")
    p.add_argument("--tf32", choices=("off", "on"), default="off",
                   help="TF32 tensor cores for matmuls and convolutions on the GPU: off (default) is "
                        "strict FP32, as basin runs; on is for information only")
    return p.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402  (after the thread environment is set)
from torch import nn  # noqa: E402


def flop_per_sample(net, in_shape):
    """2 * (forward MACs + backward MACs), counted as basin-bench-step does:
    every conv and fc layer's forward MACs once for dW and once more for dx,
    except the first one run, whose dx nobody needs. The MACs are read from
    one forward pass of a single sample (hooks on Conv2d and Linear)."""
    macs = []

    def hook(m, _inputs, out):
        n = m.weight.numel()
        if isinstance(m, nn.Conv2d):
            n *= out.shape[-2] * out.shape[-1] // m.groups
        macs.append(float(n))

    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, *in_shape, device=next(net.parameters()).device))
    net.train(was_training)
    for h in hooks:
        h.remove()
    fwd = sum(macs)
    bwd = 2 * fwd - (macs[0] if macs else 0.0)
    return 2 * (fwd + bwd)


def set_tf32(on):
    """PyTorch enables TF32 for cuDNN convolutions by default (and, in some
    versions, for matmuls): set both ways explicitly, so 'off' is strict FP32
    like basin's cuBLAS calls (CUBLAS_DEFAULT_MATH)."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")


def main():
    torch.set_num_threads(ARGS.threads)
    set_tf32(ARGS.tf32 == "on")
    torch.manual_seed(42)
    dev = torch.device(ARGS.device)
    gpu = ARGS.device == "cuda"
    net = build(ARGS.model, ARGS.input, ARGS.classes).to(dev)
    params = sum(p.numel() for p in net.parameters())
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=ARGS.lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1234)
    x_host = torch.rand(ARGS.batch, *ARGS.input, generator=g)
    y_host = torch.randint(0, ARGS.classes, (ARGS.batch,), generator=g)
    x, y = x_host.to(dev), y_host.to(dev)
    times = {"copy": 0.0, "compute": 0.0}

    def step():
        nonlocal x, y
        t0 = time.perf_counter()
        if gpu:
            x, y = x_host.to(dev), y_host.to(dev)
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        times["copy"] += t1 - t0
        times["compute"] += time.perf_counter() - t1
        return loss

    for _ in range(ARGS.warmup):
        loss = step()
    times["copy"] = times["compute"] = 0.0
    wall, cpu = [], []
    for _ in range(ARGS.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(ARGS.steps):
            loss = step()
        images = ARGS.steps * ARGS.batch
        cpu.append(images / (time.process_time() - c0))
        wall.append(images / (time.perf_counter() - w0))

    img_cpu, img_wall = statistics.median(cpu), statistics.median(wall)
    flops = flop_per_sample(net, ARGS.input)
    in_txt = "x".join(str(d) for d in ARGS.input)
    print(f"torch {torch.__version__} ({sys.executable}), model {ARGS.model}, input {in_txt}, "
          f"{ARGS.classes} classes, batch {ARGS.batch}, "
          f"{torch.get_num_threads()} threads, mkldnn {torch.backends.mkldnn.is_available()}, "
          f"TF32 {ARGS.tf32} (cudnn {torch.backends.cudnn.allow_tf32}, "
          f"matmul {torch.backends.cuda.matmul.allow_tf32})")
    print(f"parameters {params}; useful step {flops * 1e-6:.3f} MFLOP/sample")
    print(f"warm-up {ARGS.warmup} steps, then {ARGS.repeats} repeats of {ARGS.steps} steps; "
          f"medians (min..max):")
    print(f"  by CPU time  {img_cpu:9.1f} img/s ({min(cpu):.1f}..{max(cpu):.1f}), "
          f"{1e3 * ARGS.batch / img_cpu:.3f} ms/step, {img_cpu * flops * 1e-9:.2f} GFLOP/s")
    print(f"  by wall time {img_wall:9.1f} img/s ({min(wall):.1f}..{max(wall):.1f}), "
          f"{1e3 * ARGS.batch / img_wall:.3f} ms/step, {img_wall * flops * 1e-9:.2f} GFLOP/s")
    print(f"last loss {loss.item():.4f}")
    per_step = 1e3 / (ARGS.repeats * ARGS.steps)
    print(f"device {ARGS.device}: per step (wall) copy {times['copy'] * per_step:.3f} ms, "
          f"compute {times['compute'] * per_step:.3f} ms")
    print(json.dumps({
        "bench": "step", "impl": "torch", "device": ARGS.device, "tf32": ARGS.tf32,
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "copy_ms": round(times["copy"] * per_step, 4), "compute_ms": round(times["compute"] * per_step, 4),
        "model": ARGS.model, "input": in_txt, "classes": ARGS.classes, "params": params,
        "batch": ARGS.batch,
        "threads": torch.get_num_threads(), "warmup": ARGS.warmup, "steps": ARGS.steps,
        "repeats": ARGS.repeats, "flop_per_sample": flops,
        "img_s_cpu": round(img_cpu, 3), "img_s_wall": round(img_wall, 3),
        "gflops_cpu": round(img_cpu * flops * 1e-9, 4),
        "gflops_wall": round(img_wall * flops * 1e-9, 4),
        "torch": torch.__version__,
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
