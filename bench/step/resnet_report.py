"""Turn the JSON lines of bench/step/resnet.sh into bench/results/step-resnet.md.

Called by resnet.sh with what it knows in RN_* environment variables; prints
the main tables and writes the markdown file. Standard library only.
"""
import datetime
import json
import os
import statistics
import sys

TARGET_RATIO = 1.0  # PyTorch step time / basin step time, every configuration


def env(name):
    return os.environ.get("RN_" + name, "")


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["kernel"], r["model"], r["input"], int(r["batch"]), r["impl"])
            runs.setdefault(key, []).append(r)
    return runs


def ms(r, clock):
    """Milliseconds per step of one run, by CPU or wall time."""
    return 1e3 * r["batch"] / r["img_s_" + clock]


def med(values):
    return statistics.median(list(values))


def mode_title(mode):
    return f"{'environment' if mode == 'env' else 'native'} kernel: {env('CORE_' + mode.upper())}"


def table(runs, mode, configs, clock):
    rows = []
    for model, shape, _classes, batch in configs:
        b = runs.get((mode, model, shape, batch, "basin"), [])
        t = runs.get((mode, model, shape, batch, "torch"), [])
        if not b or not t:
            sys.exit(f"resnet_report.py: error: no results for {model} {shape} batch {batch} ({mode})")
        if {r["params"] for r in b} != {r["params"] for r in t}:
            sys.exit(f"resnet_report.py: error: parameter counts differ for {model} {shape}")
        b_ms, t_ms = med(ms(r, clock) for r in b), med(ms(r, clock) for r in t)
        ratio = t_ms / b_ms
        gf = med(r["gflops_" + clock] for r in b)
        sq = med(r["sgemm_gflops_" + clock] for r in b)
        row = (f"| {model} | {shape} | {batch} | {b[0]['params']:,} | {b_ms:.1f} | {t_ms:.1f} | "
               f"{ratio:.3f} | {gf:.1f} | {sq:.1f} | {gf / sq:.3f} |")
        if clock == "cpu":
            row += f" {'pass' if ratio >= TARGET_RATIO else 'MISSED'} (>= {TARGET_RATIO:g}) |"
        rows.append(row)
    head = ("| model | input | batch | parameters | basin ms/step | PyTorch ms/step | "
            "PyTorch/basin | basin GFLOP/s | SGEMM GFLOP/s | fraction of SGEMM |")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if clock == "cpu":
        head += " target |"
        rule += "---|"
    return "\n".join([head, rule] + rows)


def rounds_table(runs, mode, configs):
    rows = []
    for model, shape, _classes, batch in configs:
        b = runs[(mode, model, shape, batch, "basin")]
        t = runs[(mode, model, shape, batch, "torch")]
        rows.append(f"| {model} | {shape} | {batch} | "
                    + " / ".join(f"{ms(r, 'cpu'):.1f}" for r in b) + " | "
                    + " / ".join(f"{ms(r, 'cpu'):.1f}" for r in t) + " |")
    return "\n".join(["| model | input | batch | basin ms/step | PyTorch ms/step |",
                      "|---|---|---:|---|---|"] + rows)


def main():
    runs = load(env("RESULTS"))
    configs = []
    for line in env("CONFIGS").splitlines():
        model, shape, classes, batch = line.split()[:4]
        configs.append((model, shape, int(classes), int(batch)))
    modes = env("MODES").split()

    sections, extra = [], []
    for mode in modes:
        main_table = table(runs, mode, configs, "cpu")
        print(f"{mode_title(mode)} (OpenBLAS kernel mode '{mode}'), CPU time")
        print(main_table)
        sections.append(f"### {mode_title(mode)}\n\n{main_table}\n")
        profiles = []
        for model, shape, _classes, batch in configs:
            path = os.path.join(env("TMP"), f"profile-{mode}-{model}-{shape}-{batch}.log")
            with open(path) as f:
                text = f.read()
            part = [line for line in text[text.find("per-layer profile"):].splitlines()
                    if not line.startswith("{")]
            profiles.append(f"{model} {shape}, batch {batch}:\n\n```\n" + "\n".join(part) + "\n```\n")
        extra.append(f"""## {mode_title(mode)}: wall time, rounds, profile

Wall-time figures:

{table(runs, mode, configs, "wall")}

Per round (ms/step by CPU time):

{rounds_table(runs, mode, configs)}

`basin-bench-step --profile` (one profiled run: warm-up 1 step, then the step
counts of the table; CPU time), each layer timed on its own:

<details><summary>profiles</summary>

{chr(10).join(profiles)}
</details>
""")

    coretype, l2 = env("CORETYPE"), env("L2")
    env_vars = ", ".join(f"`{v}`" for v in (coretype and f"OPENBLAS_CORETYPE={coretype}",
                                              l2 and f"OPENBLAS_L2_SIZE={l2}") if v)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cfg_txt = "; ".join(f"{m} {s} ({c} classes) batch {b}" for m, s, c, b in configs)
    md = f"""# Training-step time of residual networks: basin against PyTorch

One process, one core, one BLAS/OpenMP thread. A step is
forward, softmax cross-entropy, backward and SGD (momentum 0.9, weight decay
5e-4) on a batch of random images already in memory, batch norm in training
mode. basin runs its presets; PyTorch runs bench/torch_models.py: for
resnet20 a CIFAR ResNet written layer for layer like basin's (3x3 stem of 16
channels, 3 stages of 3 basic blocks of 16/32/64 channels, stride 2 at the
first block of stages 2 and 3, 1x1 conv + bn projection shortcuts, no bias
before bn, global average pooling, fc), for resnet50
`torchvision.models.resnet50(num_classes=1000)`. Parameter counts are checked
equal before anything is timed.

"PyTorch/basin" is PyTorch's step time over basin's: >= 1.0 means basin is
faster. GFLOP/s counts the useful arithmetic of the conv and fc layers,
2 x (forward MACs + backward MACs) with dW everywhere and dx everywhere but
the first layer (bn, add, pooling not counted); SGEMM is cblas_sgemm
1024x1024x1024 through basin's op table in the same process. basin's 3x3
stride-1 convs with >= 16 input channels run as Winograd F(2x2, 3x3), which
needs 2.25x fewer multiplications: their GFLOP/s is an effective rate.
The Winograd products run on basin's own small-gemm kernel
(src/core/winograd_gemm.c: AVX-512 where the CPU has it, else the op
table's BLAS), which OPENBLAS_CORETYPE does not govern, so under the
"environment" kernel mode only the other gemms are Haswell's; PyTorch's
oneDNN also picks its kernels from the CPU itself.

Each cell is the median over {env("ROUNDS")} rounds of each program's median over
{env("REPEATS")} repeats (after {env("WARMUP")} warm-up steps); times by CPU time.

{chr(10).join(sections)}
Target: PyTorch/basin >= {TARGET_RATIO:g} in every configuration. The benchmark
reports it; it does not fail on it.

## Machine and software

- Date: {date}; commit {env("COMMIT")}
- CPU: {env("CPU_MODEL")} (`nproc`: {os.cpu_count()}); runs pinned to core {env("CPU")}
- Load average (1/5/15 min) before -> after: {env("LOAD")}
- basin: {env("OPENBLAS")}; build {env("BUILD_TYPE")}
- PyTorch {env("TORCH")} (Debian python3-torch, /usr/bin/python3)
- OpenBLAS kernel modes: "environment" = this shell's settings ({env_vars or 'none set'});
  "native" = the same with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`
- Run time: {env("ELAPSED")} s

## Command

```
{env("CMDLINE")}
```

which runs, for each configuration ({cfg_txt}) and round, alternately and in
an order reversed every round:

```
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c {env("CPU")} \\
  basin-bench-step --model M --input CxHxW --classes N --batch B --steps S --repeats {env("REPEATS")} --warmup {env("WARMUP")} --threads 1
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c {env("CPU")} \\
  /usr/bin/python3 bench/step/torch_step.py (the same options)
```

{chr(10).join(extra)}"""
    with open(env("OUT"), "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()
