#!/usr/bin/env bash
# Scaling experiment on one host: basin-train under mpirun for 1, 2, 4, ...
# ranks, weak scaling (batch per rank fixed, global batch = per-rank x ranks)
# and strong scaling (global batch fixed). Writes, for each kind,
# scaling-<model>-<weak|strong>.csv, .md and .png into the output folder.
#
#   launch/scaling.sh [options] [-- basin-train options]
#
#   --model NAME       model to train: mlp, cnn, resnet20 (these three report the
#                      weak-scaling target, 1 -> 2 ranks >= 0.90), or any
#                      basin-train model (default mlp)
#   --scaling KIND     weak, strong or both (default both)
#   --batch N          batch per rank of weak scaling (default 64)
#   --global-batch N   global batch of strong scaling (default: --batch x --max-ranks)
#   --max-ranks N      ranks 1, 2, 4, ... up to N, and N itself (default: the
#                      cores); more ranks than cores run oversubscribed, with a warning
#   --steps N          training steps per run (default: 300 for mlp, 60 otherwise)
#   --log-every N      metrics interval in steps (default: steps / 6); the first
#                      interval is warm-up and is left out of every figure
#   --repeats N        runs of each configuration; figures are medians (default 3)
#   --overlap on|off   off passes --no-overlap: gradients are reduced after backward
#                      (default on); "off" adds -no-overlap to the file names
#   --kernels MODE     OpenBLAS kernel mode: env (the environment's OPENBLAS_CORETYPE
#                      and OPENBLAS_L2_SIZE), native (both unset for mpirun, so
#                      OpenBLAS picks its kernels for this CPU) or both (default both)
#   --build DIR        build folder (default build/, made by launch/setup.sh when missing)
#   --data PATH        dataset (default data/fashion-mnist.h5; imported with
#                      basin-data when missing)
#   --out-dir DIR      where the results go (default bench/results)
#   --help             this text
#
# Options after -- go to every basin-train run (e.g. --bucket-mb 16, --allreduce rhd).
# The runs of one repeat are interleaved (every rank count and kernel mode in
# turn, the order reversed every repeat) so that load from other work on the
# machine falls on all of them alike. Images/s is wall time over all ranks.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmdline="launch/scaling.sh${*:+ $*}"
py=/usr/bin/python3 # Debian's interpreter: the one with python3-matplotlib

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "scaling: $*" >&2; exit 2; }
fail() { echo "scaling: error: $*" >&2; exit 1; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 '$2': expected a positive integer"; }

model=mlp scaling=both batch=64 global_batch="" max_ranks="" steps="" log_every=""
repeats=3 overlap=on kernels=both build="" data="" out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model|--scaling|--batch|--global-batch|--max-ranks|--steps|--log-every|--repeats|--overlap|--kernels|--build|--data|--out-dir)
      [ $# -ge 2 ] || die "$1 needs a value"
      v=$2
      case "$1" in
        --model) model=$v ;; --scaling) scaling=$v ;; --batch) batch=$v ;;
        --global-batch) global_batch=$v ;; --max-ranks) max_ranks=$v ;; --steps) steps=$v ;;
        --log-every) log_every=$v ;; --repeats) repeats=$v ;; --overlap) overlap=$v ;;
        --kernels) kernels=$v ;; --build) build=$v ;; --data) data=$v ;; --out-dir) out_dir=$v ;;
      esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (basin-train options go after --; see --help)" ;;
  esac
done
extra=("$@")

cores=$(nproc)
[ -n "$model" ] || die "--model needs a name"
case "$scaling" in weak|strong|both) ;; *) die "--scaling '$scaling': expected weak, strong or both" ;; esac
case "$overlap" in on|off) ;; *) die "--overlap '$overlap': expected on or off" ;; esac
case "$kernels" in env|native|both) ;; *) die "--kernels '$kernels': expected env, native or both" ;; esac
posint --batch "$batch"
max_ranks=${max_ranks:-$cores}
posint --max-ranks "$max_ranks"
posint --repeats "$repeats"
if [ -z "$steps" ]; then
  if [ "$model" = mlp ]; then steps=300; else steps=60; fi
fi
posint --steps "$steps"
[ -n "$log_every" ] || log_every=$(( steps / 6 > 0 ? steps / 6 : 1 ))
posint --log-every "$log_every"
[ $(( steps / log_every )) -ge 2 ] ||
  die "--steps $steps with --log-every $log_every leaves no interval after the warm-up one"
global_batch=${global_batch:-$(( batch * max_ranks ))}
posint --global-batch "$global_batch"

# Rank counts: powers of two below max_ranks, and max_ranks itself.
ranks=()
for ((n = 1; n < max_ranks; n *= 2)); do ranks+=("$n"); done
ranks+=("$max_ranks")
if [ "$scaling" != weak ]; then
  for n in "${ranks[@]}"; do
    [ $(( global_batch % n )) -eq 0 ] ||
      die "--global-batch $global_batch does not divide by $n ranks (strong scaling splits it over the ranks)"
  done
fi
kinds=(weak strong)
[ "$scaling" = both ] || kinds=("$scaling")
modes=(env native)
[ "$kernels" = both ] || modes=("$kernels")

cd "$root"
build=${build:-build}
data=${data:-data/fashion-mnist.h5}
out_dir=${out_dir:-bench/results}
[ -d "$out_dir" ] || mkdir -p "$out_dir" || die "cannot create --out-dir '$out_dir'"
"$py" -c 'import matplotlib' 2>/dev/null ||
  fail "$py cannot import matplotlib (launch/setup.sh --bench installs python3-matplotlib)"
command -v mpirun >/dev/null || fail "mpirun not found (launch/setup.sh installs openmpi-bin)"
if [ "$max_ranks" -gt "$cores" ]; then
  echo "scaling: warning: $max_ranks ranks on $cores cores: runs with more ranks than cores are" \
       "oversubscribed (--oversubscribe --bind-to none) and measure time-sharing, not scaling" >&2
fi

# ---- build and data -------------------------------------------------------------
train="$build/launch/basin-train"
if [ ! -x "$train" ]; then
  if [ "$build" = build ]; then
    launch/setup.sh
  else
    echo "scaling: configuring and building $build (Release)"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j"$cores" >/dev/null
  fi
  [ -x "$train" ] || fail "no $train after the build"
fi
if [ ! -f "$data" ]; then
  echo "scaling: importing Fashion-MNIST into $data"
  mkdir -p "$(dirname "$data")"
  "$build/launch/basin-data" import fashion-mnist --output "$data"
fi

# ---- the runs -----------------------------------------------------------------------
# Global batch of each (kind, ranks); one run serves every kind that asks for
# the same (ranks, global batch).
declare -A gb_of=()
configs=()
for kind in "${kinds[@]}"; do
  for n in "${ranks[@]}"; do
    if [ "$kind" = weak ]; then gb=$(( batch * n )); else gb=$global_batch; fi
    gb_of[$kind-$n]=$gb
    case " ${configs[*]} " in *" $n:$gb "*) ;; *) configs+=("$n:$gb") ;; esac
  done
done

train_opts=(--model "$model" --data "$data" --max-steps "$steps" --eval-every 0
            --log-every "$log_every")
[ "$overlap" = off ] && train_opts+=(--no-overlap)
# Validate every configuration once, in one process, before the first run.
for c in "${configs[@]}"; do
  n=${c%%:*} gb=${c#*:}
  msg=$("$train" --check="$n" "${train_opts[@]}" --batch "$gb" "${extra[@]}" 2>&1 >/dev/null) ||
    die "basin-train rejects the options for $n ranks, batch $gb: ${msg##*error: }"
done

kernel_env() {
  if [ "$1" = native ]; then echo "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"; else echo env; fi
}
declare -A core_of=()
for m in "${modes[@]}"; do
  core_of[$m]=$($(kernel_env "$m") OPENBLAS_VERBOSE=2 "$train" --help 2>&1 | sed -n 's/^Core: *//p' | head -n 1)
  [ -n "${core_of[$m]}" ] || core_of[$m]=unknown
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
runs="$tmp/runs.csv"
echo "ranks,global_batch,kernel,repeat,metrics,wall_s,cpu_s,other_load" >"$runs"

# Busy CPU seconds of the whole machine so far (all cores, from /proc/stat).
busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }

run_one() { # ranks global_batch mode repeat
  local n=$1 gb=$2 mode=$3 rep=$4
  local dir="$tmp/run-$n-$gb-$mode-$rep"
  mkdir -p "$dir"
  local mpi=(-np "$n" -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
  [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
  if [ "$n" -le "$cores" ]; then mpi+=(--bind-to core --map-by core)
  else mpi+=(--oversubscribe --bind-to none); fi
  local cmd=($(kernel_env "$mode") mpirun "${mpi[@]}" "$train" "${train_opts[@]}" --batch "$gb"
             --output-dir "$dir" "${extra[@]}")
  echo "${cmd[*]}" >"$dir/command"
  # Bash's time counts the CPU of every process mpirun waited for: the ranks.
  local TIMEFORMAT="%R %U %S" t b0 b1
  b0=$(busy_s)
  if ! t=$( { time "${cmd[@]}" >"$dir/log" 2>&1; } 2>&1 ); then
    tail -n 20 "$dir/log" >&2
    fail "run failed: ${cmd[*]}"
  fi
  b1=$(busy_s)
  read -r wall user sys <<<"$t"
  [ -s "$dir/metrics.jsonl" ] || fail "no metrics from: ${cmd[*]}"
  # Other load: cores kept busy during the run by processes that are not this run's.
  echo "$n,$gb,$mode,$rep,$dir/metrics.jsonl,$wall,$(awk "BEGIN {print $user + $sys}")," \
       "$(awk "BEGIN {x = ($b1 - $b0 - $user - $sys) / $wall; print (x > 0 ? x : 0)}")" | tr -d ' ' >>"$runs"
}

order=()
for c in "${configs[@]}"; do for m in "${modes[@]}"; do order+=("$c:$m"); done; done
total=$(( ${#order[@]} * repeats ))
echo "scaling: $model, ${kinds[*]} scaling, ranks ${ranks[*]}, $steps steps (log every $log_every)," \
     "overlap $overlap, kernels: $(for m in "${modes[@]}"; do printf '%s=%s ' "$m" "${core_of[$m]}"; done)"
echo "scaling: $total runs (${#order[@]} configurations x $repeats repeats)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s) done_runs=0
for ((rep = 1; rep <= repeats; rep++)); do
  seq_idx=$(seq 0 $(( ${#order[@]} - 1 )))
  [ $(( rep % 2 )) -eq 1 ] || seq_idx=$(seq $(( ${#order[@]} - 1 )) -1 0)
  for i in $seq_idx; do
    IFS=: read -r n gb mode <<<"${order[i]}"
    run_one "$n" "$gb" "$mode" "$rep"
    done_runs=$(( done_runs + 1 ))
    echo "scaling: [$done_runs/$total] $n rank(s), batch $gb, $mode kernels ($(( $(date +%s) - start )) s)"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

# ---- report -------------------------------------------------------------------------
kernel_desc=()
for m in "${modes[@]}"; do kernel_desc+=("$m=${core_of[$m]}"); done
suffix=""
[ "$overlap" = off ] && suffix="-no-overlap"
for kind in "${kinds[@]}"; do
  spec=""
  for n in "${ranks[@]}"; do spec+="$n:${gb_of[$kind-$n]} "; done
  SC_RUNS=$runs SC_KIND=$kind SC_SPEC=$spec SC_MODEL=$model SC_OVERLAP=$overlap \
  SC_KERNELS="${kernel_desc[*]}" SC_STEPS=$steps SC_LOG_EVERY=$log_every SC_REPEATS=$repeats \
  SC_CORES=$cores SC_CMDLINE=$cmdline SC_LOAD="$load_before -> $load_after" SC_ELAPSED=$elapsed \
  SC_EXTRA="${extra[*]}" SC_CORETYPE=${OPENBLAS_CORETYPE:-} SC_L2=${OPENBLAS_L2_SIZE:-} \
  SC_OUT="$out_dir/scaling-$model-$kind$suffix" \
  SC_EXAMPLE="$(cat "$tmp/run-${ranks[-1]}-${gb_of[$kind-${ranks[-1]}]}-${modes[-1]}-1/command")" \
    "$py" - <<'EOF'
import csv, datetime, json, os, platform, statistics, subprocess

E = lambda k: os.environ["SC_" + k]
kind, model = E("KIND"), E("MODEL")
want = [tuple(map(int, s.split(":"))) for s in E("SPEC").split()]  # (ranks, global batch)
modes = [s.split("=")[0] for s in E("KERNELS").split()]
cores_of = dict(s.split("=") for s in E("KERNELS").split())
PARTS = ("data_wait", "forward", "backward", "comm_exposed", "optimizer")
QUIET = 0.25  # other load, in cores, below which a run counts as undisturbed


def measure(path, gb):
    """Images/s and the mean timing split of one run, the first interval left out."""
    recs = [json.loads(l) for l in open(path) if '"event":"step"' in l]
    if len(recs) < 2:
        raise SystemExit(f"scaling: error: {path}: fewer than two logging intervals")
    prev, images, secs, split = recs[0]["step"], 0.0, 0.0, dict.fromkeys(PARTS, 0.0)
    for r in recs[1:]:
        steps = r["step"] - prev
        prev = r["step"]
        dt = steps * gb / r["images_per_s"]
        images += steps * gb
        secs += dt
        for p in PARTS:
            split[p] += steps * r[p + "_mean_s"]
    n_steps = recs[-1]["step"] - recs[0]["step"]
    return images / secs, {p: split[p] / n_steps for p in PARTS}


rows = list(csv.DictReader(open(E("RUNS"))))
res = {}  # (mode, ranks) -> list of (repeat, img/s, split, cpu/wall, other load)
for r in rows:
    n, gb = int(r["ranks"]), int(r["global_batch"])
    if (n, gb) not in want:
        continue
    ips, split = measure(r["metrics"], gb)
    res.setdefault((r["kernel"], n), []).append(
        (int(r["repeat"]), ips, split, float(r["cpu_s"]) / float(r["wall_s"]),
         float(r["other_load"])))

med = statistics.median
out = []
for mode in modes:
    base = res[(mode, 1)]
    base_ips = med(x[1] for x in base)
    base_by_rep = {x[0]: x[1] for x in base}
    base_load = {x[0]: x[4] for x in base}
    for n, gb in want:
        xs = res[(mode, n)]
        ips = med(x[1] for x in xs)
        paired = med(x[1] / n / base_by_rep[x[0]] for x in xs)
        # Repeats in which neither this run nor the 1-rank run shared the
        # machine with more than QUIET cores' worth of other work.
        quiet = [x[1] / n / base_by_rep[x[0]] for x in xs
                 if x[4] < QUIET and base_load[x[0]] < QUIET]
        out.append(dict(
            model=model, scaling=kind, kernel=mode, core=cores_of[mode], overlap=E("OVERLAP"),
            ranks=n, per_rank_batch=gb // n, global_batch=gb,
            images_per_s=round(ips, 1), images_per_s_per_rank=round(ips / n, 1),
            efficiency=round(ips / n / base_ips, 4), efficiency_paired=round(paired, 4),
            **{p + "_ms": round(1e3 * med(x[2][p] for x in xs), 3) for p in PARTS},
            step_ms=round(1e3 * med(sum(x[2].values()) for x in xs), 3),
            efficiency_quiet=round(med(quiet), 4) if quiet else "",
            quiet_repeats=len(quiet),
            cores_busy=round(med(x[3] for x in xs), 2),
            other_load=round(med(x[4] for x in xs), 2),
            runs_images_per_s=" / ".join(f"{x[1]:.0f} [{x[4]:.2f}]" for x in sorted(xs))))

with open(E("OUT") + ".csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(out[0]))
    w.writeheader()
    w.writerows(out)

def title(mode):
    return (f"environment kernel: {cores_of[mode]}" if mode == "env"
            else f"native kernel: {cores_of[mode]}")

tables = []
for mode in modes:
    lines = [f"### {title(mode)}", "",
             "| ranks | global batch | images/s | images/s per rank | scaling efficiency "
             "| data wait ms | forward ms | backward ms | exposed comm ms | optimizer ms "
             "| step ms | cores busy | other load | images/s [other load] per repeat |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in out:
        if o["kernel"] != mode:
            continue
        lines.append(
            f"| {o['ranks']} | {o['global_batch']} | {o['images_per_s']:,.0f} | "
            f"{o['images_per_s_per_rank']:,.0f} | {o['efficiency']:.3f} "
            f"(paired {o['efficiency_paired']:.3f}"
            + (f", quiet {o['efficiency_quiet']:.3f} of {o['quiet_repeats']}" if o["quiet_repeats"]
               else ", no quiet repeat") + ") | "
            + " | ".join(f"{o[p + '_ms']:.3f}" for p in PARTS)
            + f" | {o['step_ms']:.3f} | {o['cores_busy']:.2f} | {o['other_load']:.2f} "
            f"| {o['runs_images_per_s']} |")
    tables.append("\n".join(lines))

target = ""
if kind == "weak" and model in ("mlp", "cnn", "resnet20"):
    verdicts = []
    for o in out:
        if o["ranks"] == 2:
            ok = "pass" if o["efficiency"] >= 0.90 else "MISSED"
            q = (f", {o['efficiency_quiet']:.3f} over the {o['quiet_repeats']} quiet repeat(s)"
                 if o["quiet_repeats"] else "")
            verdicts.append(f"{title(o['kernel'])}: {o['efficiency']:.3f} ({ok}){q}")
    if verdicts:
        target = ("Target: weak-scaling efficiency from 1 to 2 ranks >= 0.90. "
                  "Measured: " + "; ".join(verdicts) + ".\n")

# The plot: images/s and efficiency against ranks, one line per kernel mode.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
for mode in modes:
    xs = [o for o in out if o["kernel"] == mode]
    r = [o["ranks"] for o in xs]
    a1.plot(r, [o["images_per_s"] for o in xs], "o-", label=title(mode))
    a1.plot(r, [xs[0]["images_per_s"] * n for n in r], ":",
            color=a1.lines[-1].get_color(), label=f"linear ({cores_of[mode]})")
    a2.plot(r, [o["efficiency"] for o in xs], "o-", label=title(mode))
a1.set(xlabel="ranks", ylabel="images/s (wall, all ranks)", xticks=[w[0] for w in want])
a2.set(xlabel="ranks", ylabel="images/s per rank / images/s at 1 rank", ylim=(0, 1.1),
       xticks=[w[0] for w in want])
a2.axhline(0.9, color="grey", lw=0.8, ls="--", label="0.90")
a1.legend(fontsize=8)
a2.legend(fontsize=8)
batch_txt = (f"batch {want[0][1]} per rank" if kind == "weak" else f"global batch {want[0][1]}")
fig.suptitle(f"basin {kind} scaling, {model}, {batch_txt}, overlap {E('OVERLAP')}")
fig.tight_layout()
fig.savefig(E("OUT") + ".png", dpi=110)

cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu_model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines()
                  if l.startswith("Model name")), platform.processor())
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
name = os.path.basename(E("OUT"))
what = ("batch per rank fixed, global batch = per-rank x ranks" if kind == "weak"
        else "global batch fixed, split over the ranks")
env_note = ", ".join(x for x in (E("CORETYPE") and f"OPENBLAS_CORETYPE={E('CORETYPE')}",
                                 E("L2") and f"OPENBLAS_L2_SIZE={E('L2')}") if x) or "none"
md = f"""# {kind.capitalize()} scaling: {model}

{what}; overlap of the all-reduce with backward {E('OVERLAP')}.
images/s is wall time over all ranks, from basin-train's metrics file, over
every logging interval but the first (warm-up); each figure is the median over
{E('REPEATS')} repeats. Scaling efficiency = (images/s per rank at N) / (images/s at
1 rank); "paired" is the median of that ratio taken within each repeat (the
runs of a repeat are back to back, so it cancels slow drifts in the machine's
load). The timing split is the mean per step over ranks (basin's
`*_mean_s`): data wait, forward, backward, exposed (non-overlapped) all-reduce
and optimizer; step ms is their sum. "cores busy" is CPU time / wall time of
the whole mpirun (start-up included). "other load" is how many cores other
processes on the machine kept busy during the run (busy time from /proc/stat
minus the run's own CPU time, over its wall time; median over repeats, and per
repeat in brackets); "quiet" is the paired efficiency over the repeats in which
both the N-rank and the 1-rank run saw an other load below {QUIET} cores.

{target}
{chr(10).join(t + chr(10) for t in tables)}
![{name}]({name}.png)

## Setup

- Date: {date}; machine: {cpu_model}, {E('CORES')} cores; load average before -> after: {E('LOAD')}
- Kernel modes: "environment" runs with this shell's OpenBLAS settings ({env_note});
  "native" runs mpirun under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`, so OpenBLAS
  picks its kernels for the CPU. The core is the one OpenBLAS names with OPENBLAS_VERBOSE=2.
- {E('STEPS')} steps per run, metrics every {E('LOG_EVERY')} steps; run time of the whole sweep {E('ELAPSED')} s.
- Command: `{E('CMDLINE')}`
- A run ({want[-1][0]} ranks), as executed:

```
{E('EXAMPLE')}
```
"""
open(E("OUT") + ".md", "w").write(md)
print(f"scaling: {kind}:")
print("\n\n".join(tables))
print(f"scaling: wrote {E('OUT')}.csv, .md, .png")
EOF
done
