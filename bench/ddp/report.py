"""Turn the runs of bench/ddp/run.sh into bench/results/ddp.md.

Called by run.sh with what it knows in DDP_* environment variables; prints
the tables and writes the markdown file. Standard library only.
"""
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys

TARGET = 1.3  # basin images/s / PyTorch DDP images/s, for mlp and cnn
MODES = ("env", "native")


def env(name):
    return os.environ.get("DDP_" + name, "")


def basin_rate(path, global_batch):
    """Images/s over every logging interval but the first (warm-up)."""
    recs = [json.loads(line) for line in open(path) if '"event":"step"' in line]
    if len(recs) < 2:
        sys.exit(f"report.py: error: {path}: fewer than two logging intervals")
    images = secs = 0.0
    prev = recs[0]["step"]
    for r in recs[1:]:
        n = (r["step"] - prev) * global_batch
        prev = r["step"]
        images += n
        secs += n / r["images_per_s"]
    return images / secs


def torch_rate(path):
    line = [x for x in open(path) if x.startswith("{")][-1]
    return json.loads(line)["img_s_wall"]


def title(mode):
    core = env("CORE_ENV") if mode == "env" else env("CORE_NATIVE")
    return f"environment kernel: {core}" if mode == "env" else f"native kernel: {core}"


def main():
    ranks, per_rank = int(env("RANKS")), int(env("PER_RANK"))
    rates = {}  # (impl, model, kernel) -> {round: img/s}
    with open(env("RESULTS")) as f:
        for row in csv.DictReader(f):
            if row["impl"] == "basin":
                v = basin_rate(row["source"], ranks * per_rank)
            else:
                v = torch_rate(row["source"])
            rates.setdefault((row["impl"], row["model"], row["kernel"]), {})[int(row["round"])] = v
    models = [c.split()[0] for c in env("CONFIGS").split(" ") if c and not c[0].isdigit()]
    models = list(dict.fromkeys(m for m in models))

    med = statistics.median
    sections, summary = [], []
    for mode in MODES:
        rows = []
        for model in models:
            b = rates[("basin", model, mode)]
            t = rates[("torch", model, mode)]
            bm, tm = med(b.values()), med(t.values())
            ratio = bm / tm
            paired = med(b[r] / t[r] for r in b if r in t)
            ok = "pass" if ratio >= TARGET else "MISSED"
            rows.append(f"| {model} | {bm:,.0f} | {tm:,.0f} | {ratio:.3f} | {paired:.3f} | "
                        f"{ok} (>= {TARGET:g}) | "
                        f"{' / '.join(f'{b[r]:,.0f}' for r in sorted(b))} | "
                        f"{' / '.join(f'{t[r]:,.0f}' for r in sorted(t))} |")
            summary.append(f"{title(mode)}, {model}: basin/DDP {ratio:.3f} ({ok})")
        sections.append(
            f"### {title(mode)}\n\n"
            "| model | basin img/s | PyTorch DDP img/s | basin/DDP | paired ratio | target "
            "| basin per round | DDP per round |\n"
            "|---|---:|---:|---:|---:|---|---|---|\n" + "\n".join(rows) + "\n")
    print("\n".join(sections))
    print("\n".join(summary))

    def command(impl, model, mode):
        path = os.path.join(env("TMP"), f"{impl}-{model}-{mode}-1", "command")
        with open(path) as f:
            return f.read().strip()

    commands = "\n".join(command(i, m, k) for m in models for i in ("basin", "torch")
                         for k in MODES)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu_model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), "?")
    try:
        import torch  # only for its version string
        torch_ver = torch.__version__
    except ImportError:
        torch_ver = "?"
    coretype, l2 = env("CORETYPE"), env("L2")
    env_vars = ", ".join(x for x in (coretype and f"OPENBLAS_CORETYPE={coretype}",
                                     l2 and f"OPENBLAS_L2_SIZE={l2}") if x) or "none set"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = f"""# Data-parallel throughput: basin against PyTorch DistributedDataParallel

{ranks} processes on one host, batch {per_rank} per rank (global {ranks * per_rank}), one
BLAS/OpenMP thread per process (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, and
torch.set_num_threads(1) for PyTorch), both started by mpirun with
`--bind-to core`. Images/s is wall time over all ranks. Each cell is the median
over {env("ROUNDS")} rounds; in every round the runs follow each other back to back
(the order reverses every round), and "paired ratio" is the median of the
per-round ratios, which cancels slow drifts in the machine's load.

- basin: `basin-train` on Fashion-MNIST from `data/fashion-mnist.h5` (HDF5 reader
  with its prefetch thread), bucketed all-reduce overlapped with backward
  (defaults), replica checksum every 100 steps; images/s from its metrics file
  over every logging interval but the first (warm-up).
- PyTorch: `bench/ddp/torch_ddp.py`, DDP with the gloo backend and its default
  25 MB buckets, on random images already in memory (no data reading in its
  time); images/s over 5 timed windows after a warm-up, median.
- Same models: `mlp` = 784-1024-1024-10, `cnn` = conv 32x5x5, pool, conv 64x5x5,
  pool, fc 1024, dropout 0.5, fc 10; SGD, momentum 0.9, weight decay 5e-4.

{chr(10).join(sections)}
Target: basin images/s / PyTorch DDP images/s >= {TARGET:g} for mlp and cnn.
The benchmark reports it; it does not fail on it.

## Kernel modes

"Environment": the OpenBLAS settings of this machine's environment ({env_vars});
OpenBLAS loads its `{env("CORE_ENV")}` kernels. "Native": the same command under
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`; OpenBLAS picks `{env("CORE_NATIVE")}`
for this CPU. The core is the one OpenBLAS names with OPENBLAS_VERBOSE=2. PyTorch
loads the same OpenBLAS for its Linear layers (its Conv2d goes through oneDNN,
which the variables do not touch), so both programs run in both modes.

## Machine and software

- Date: {date}; commit {env("COMMIT")} (plus uncommitted work in the tree)
- CPU: {cpu_model}, {os.cpu_count()} cores; load average (1/5/15 min) before -> after: {env("LOAD")}
- {env("MPI")}; OpenBLAS package {env("OPENBLAS")}; PyTorch {torch_ver} (Debian python3-torch, /usr/bin/python3)
- Run time: {env("ELAPSED")} s; PyTorch runs that hung and were run again: {env("RETRIES") or 0}

## Command

```
{env("CMDLINE")}
```

which runs, in round 1 (later rounds alike, the --output-dir and --port aside):

```
{commands}
```
"""
    with open(env("OUT"), "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()
