"""Turn the JSON lines of bench/step/run.sh into bench/results/step.md.

Called by run.sh with everything it knows in STEP_* environment variables;
prints the main table and writes the markdown file. Standard library only.
"""
import datetime
import json
import os
import statistics
import sys

# (model, batch) -> (minimum basin/PyTorch ratio, minimum fraction of SGEMM).
TARGETS = {
    ("mlp", 64): (1.3, None),
    ("mlp", 256): (1.0, 0.85),
    ("cnn", 64): (1.0, None),
    ("cnn", 256): (1.0, 0.75),
}


def env(name):
    return os.environ.get("STEP_" + name, "")


MODES = ("env", "native")


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["kernel"], r["model"], int(r["batch"]), r["impl"])
            runs.setdefault(key, []).append(r)
    return runs


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def med_mode(runs, mode, key):
    """Median of key over every basin run of one kernel mode."""
    return statistics.median(r[key] for (k, _, _, impl), rows in runs.items()
                             if k == mode and impl == "basin" for r in rows)


def verdict(value, minimum):
    if minimum is None:
        return ""
    return f"{'pass' if value >= minimum else 'FAIL'} (>= {minimum:g})"


def mode_title(mode):
    core = env("CORE_ENV") if mode == "env" else env("CORE_NATIVE")
    return f"environment kernel: {core}" if mode == "env" else f"native kernel: {core}"


def tables(runs, mode, configs):
    """The main (CPU time), wall-time and per-round tables of one kernel mode."""
    main_rows, wall_rows, round_rows = [], [], []
    for model, batch, _ in configs:
        b = runs.get((mode, model, batch, "basin"), [])
        t = runs.get((mode, model, batch, "torch"), [])
        if not b or not t:
            sys.exit(f"report.py: error: no results for {model} batch {batch} ({mode} kernels)")
        b_img, t_img = med(b, "img_s_cpu"), med(t, "img_s_cpu")
        ratio = b_img / t_img
        gf, sq = med(b, "gflops_cpu"), med(b, "sgemm_gflops_cpu")
        frac = gf / sq
        want_ratio, want_frac = TARGETS.get((model, batch), (None, None))
        checks = [v for v in (verdict(ratio, want_ratio) and f"ratio {verdict(ratio, want_ratio)}",
                              verdict(frac, want_frac) and f"SGEMM {verdict(frac, want_frac)}")
                  if v]
        main_rows.append(f"| {model} | {batch} | {b_img:,.0f} | {t_img:,.0f} | {ratio:.3f} | "
                         f"{gf:.1f} | {sq:.1f} | {frac:.3f} | {'; '.join(checks)} |")
        bw, tw = med(b, "img_s_wall"), med(t, "img_s_wall")
        wall_rows.append(f"| {model} | {batch} | {bw:,.0f} | {tw:,.0f} | {bw / tw:.3f} | "
                         f"{med(b, 'gflops_wall'):.1f} | {med(b, 'sgemm_gflops_wall'):.1f} | "
                         f"{med(b, 'gflops_wall') / med(b, 'sgemm_gflops_wall'):.3f} |")
        lg = b[0]["layer_gemm"]
        b_rounds = " / ".join(f"{r['img_s_cpu']:,.0f}" for r in b)
        t_rounds = " / ".join(f"{r['img_s_cpu']:,.0f}" for r in t)
        round_rows.append(f"| {model} | {batch} | {b_rounds} | {t_rounds} | "
                          f"{lg[0]}x{lg[1]}x{lg[2]}: {med(b, 'layer_gemm_gflops_cpu'):.1f} |")
    head = ("| model | batch | basin img/s | PyTorch img/s | basin/PyTorch | basin GFLOP/s | "
            "SGEMM GFLOP/s | fraction of SGEMM | targets |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|")
    wall_head = ("| model | batch | basin img/s | PyTorch img/s | basin/PyTorch | basin GFLOP/s | "
                 "SGEMM GFLOP/s | fraction of SGEMM |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    round_head = ("| model | batch | basin | PyTorch | largest layer gemm |\n"
                  "|---|---:|---|---|---|")
    return (head + "\n" + "\n".join(main_rows), wall_head + "\n" + "\n".join(wall_rows),
            round_head + "\n" + "\n".join(round_rows))


def main():
    runs = load(env("RESULTS"))
    # CONFIGS is "model batch steps model batch steps ...".
    flat = env("CONFIGS").split()
    configs = [(flat[i], int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    main_tables, wall_tables, round_tables, profiles = {}, {}, {}, {}
    for mode in MODES:
        main_tables[mode], wall_tables[mode], round_tables[mode] = tables(runs, mode, configs)
        print(f"{mode_title(mode)} (OpenBLAS kernel mode '{mode}')")
        print(main_tables[mode])
        parts = []
        for model, batch, _ in configs:
            path = os.path.join(env("TMP"), f"profile-{mode}-{model}-{batch}.log")
            with open(path) as f:
                text = f.read()
            part = text[text.find("per-layer profile"):].splitlines()
            part = [line for line in part if not line.startswith("{")]
            parts.append(f"{model}, batch {batch}:\n\n```\n" + "\n".join(part) + "\n```\n")
        profiles[mode] = "\n".join(parts)

    steps_txt = ", ".join(f"{m} {b}: --steps {s}" for m, b, s in configs)
    coretype, l2 = env("CORETYPE"), env("L2")
    env_vars = ", ".join(f"`{v}`" for v in (coretype and f"OPENBLAS_CORETYPE={coretype}",
                                              l2 and f"OPENBLAS_L2_SIZE={l2}") if v)
    sgemm = {m: med_mode(runs, m, "sgemm_gflops_cpu") for m in MODES}
    notes = [
        f"- Kernel modes. \"Environment\": the OpenBLAS settings of this machine's environment "
        f"({env_vars or 'none set'}), under which OpenBLAS loads its `{env('CORE_ENV')}` kernels. "
        f"\"Native\": the same command with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`, "
        f"under which it loads `{env('CORE_NATIVE')}` (CPU has AVX-512: {env('AVX512')}). "
        f"The core is the one OpenBLAS names with `OPENBLAS_VERBOSE=2`. SGEMM 1024 "
        f"(median over all basin runs): {sgemm['env']:.1f} GFLOP/s ({env('CORE_ENV')}) and "
        f"{sgemm['native']:.1f} GFLOP/s ({env('CORE_NATIVE')}).",
        "- basin's gemm and PyTorch's Linear go through this OpenBLAS, so both programs run "
        "in both modes; PyTorch's Conv2d goes through oneDNN, which picks its instruction "
        "set itself whatever the OpenBLAS variables say.",
    ]

    sections = []
    for mode in MODES:
        sections.append(f"""### {mode_title(mode)}

{main_tables[mode]}
""")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = f"""# Training-step throughput: basin against PyTorch

One process, one core, one BLAS/OpenMP thread. A step is forward, softmax
cross-entropy, backward and SGD (momentum 0.9, weight decay 5e-4) on a batch of
random 1x28x28 images already in memory: the training loop minus data reading
and the all-reduce. GFLOP/s counts the useful arithmetic,
2 x (forward MACs + backward MACs), where backward does dW for every fc/conv
layer and dx for all but the first. SGEMM is cblas_sgemm 1024x1024x1024
through basin's op table, measured in the same process, so "fraction of SGEMM"
compares basin's step with the best gemm of the same kernel set. The MACs are
those of direct convolution: the cnn's second conv runs as Winograd
F(2x2, 5x5) (src/core/winograd.h), which needs 2.8x fewer multiplications,
so its "GFLOP/s" is an effective rate and its fraction can exceed 1
(`BASIN_CONV=im2col` gives the direct rate).

Rates are by CPU time (see "Method"); each cell is the median over {env("ROUNDS")} rounds
of each program's median over 5 repeats. Two tables, one per OpenBLAS kernel
mode (see "Machine and software"); the runs of both modes are interleaved.

{chr(10).join(sections)}
Targets, in each mode: basin/PyTorch >= 1.0 everywhere and >= 1.3 for mlp at batch 64;
fraction of SGEMM >= 0.85 for mlp at 256 and >= 0.75 for cnn at 256.
The benchmark reports them; it does not fail on them.

## Machine and software

- Date: {date}; commit {env("COMMIT")} (plus uncommitted work in the tree)
- CPU: {env("CPU_MODEL")}, {env("CORES")} cores (`nproc`: {os.cpu_count()}); AVX-512: {env("AVX512")}
- Load average (1/5/15 min) before -> after: {env("LOAD")}
- basin: {env("OPENBLAS")}
- basin build: {env("BUILD_TYPE")}
- PyTorch {env("TORCH")} (Debian python3-torch, /usr/bin/python3)
- Run time: {env("ELAPSED")} s
{chr(10).join(notes)}

## Command

```
{env("CMDLINE")}
```

which runs, for each configuration and round, in an order that reverses every round:

```
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
  taskset -c {env("CPU")} {env("BENCH")} --model M --batch B --steps S {env("COMMON")}
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
  taskset -c {env("CPU")} /usr/bin/python3 bench/step/torch_step.py --model M --batch B --steps S {env("COMMON")}
```

each once as the environment has it and once prefixed with
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`, with {steps_txt}.

## Method

- Both programs are pinned to the same core (`taskset -c {env("CPU")}`) and run alternately,
  so on a shared machine they compete for the same core under the same load.
- Each reports images/s by CPU time (`CLOCK_PROCESS_CPUTIME_ID`, `time.process_time`)
  and by wall time. With one thread and an idle core they are equal; under load the
  wall-time rate also measures how much of the core the scheduler gave the process,
  which is why the tables above use CPU time.
"""
    for mode in MODES:
        md += f"""
## {mode_title(mode)}: wall time, rounds, profile

Wall-time figures:

{wall_tables[mode]}

Per round (images/s by CPU time), and the largest layer's forward gemm (m x n x k, GFLOP/s):

{round_tables[mode]}

`basin-bench-step --profile`: the same step, each layer timed on its own (CPU time).
fc/conv backward includes dW, db and, where the layer computes it, dx.

{profiles[mode]}"""
    with open(env("OUT"), "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()
