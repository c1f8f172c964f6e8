"""bench/plan/validate.sh's bookkeeping: predictions written before any
held-out measurement, then the comparison.

    validate.py predict PLAN PROFILE_DIR CONFIGS OUT_CSV
    validate.py report PRED_CSV RUNS_DIR OUT_BASE

CONFIGS: lines "model hosts ranks_per_host rate batch" (rate: 1gbit, 250mbit).
PROFILE_DIR holds links-<rate>.json (calibrate on the calibration set) and
compute-<model>-w<W>.json (basin-bench-step under the sharing of W ranks on
this machine); predictions use them and nothing measured on the held-out set.
"""
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {"mlp": "mlp", "cnn": "cnn", "wide-mlp": "flatten,fc:2048,relu,fc:2048,relu,fc:10"}


def merge_profile(links_path, compute_path, out_path):
    links = json.load(open(links_path))
    comp = json.load(open(compute_path))
    prof = {"format": "basin-plan-profile", "version": 1, "links": links["links"], "compute": comp["compute"]}
    json.dump(prof, open(out_path, "w"), indent=1)


def predict(plan, pdir, configs, out_csv):
    rows = []
    for line in open(configs):
        if not line.strip() or line.startswith("#"):
            continue
        model, hosts, rph, rate, batch = line.split()
        W = int(hosts) * int(rph)
        prof = os.path.join(pdir, "plan-%s-%s-w%d.json" % (model, rate, W))
        merge_profile(os.path.join(pdir, "links-%s.json" % rate),
                      os.path.join(pdir, "compute-%s-w%d.json" % (model, W)), prof)
        r = subprocess.run([plan, "--model", MODELS[model], "--hosts", hosts, "--ranks-per-host", rph,
                            "--batch", batch, "--profile", prof, "--allreduce", "hier", "--bucket-mb", "25",
                            "--json"], capture_output=True, text=True, check=True)
        d = json.loads(r.stdout)
        rows.append({"model": model, "hosts": hosts, "ranks_per_host": rph, "rate": rate, "batch": batch,
                     "pred_step_ms": round(1e3 * d["step_s"], 3), "pred_compute_ms": round(1e3 * d["compute_s"], 3),
                     "pred_comm_ms": round(1e3 * d["exposed_comm_s"], 3),
                     "pred_optim_ms": round(1e3 * d["optimizer_s"], 3)})
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("validate: %d predictions written to %s (sha256 %s) before any held-out run" %
          (len(rows), out_csv, hashlib.sha256(open(out_csv, "rb").read()).hexdigest()[:16]))


def measured_step_ms(metrics, global_batch):
    """Mean step time over the logging intervals after the first (warm-up)."""
    recs = [json.loads(l) for l in open(metrics) if '"event":"step"' in l]
    if len(recs) < 2:
        raise SystemExit("validate: %s: fewer than two logging intervals" % metrics)
    steps = recs[-1]["step"] - recs[0]["step"]
    secs, prev = 0.0, recs[0]["step"]
    for r in recs[1:]:
        secs += (r["step"] - prev) * global_batch / r["images_per_s"]
        prev = r["step"]
    return 1e3 * secs / steps


def report(pred_csv, runs, out_base, command="bench/plan/validate.sh"):
    rows = list(csv.DictReader(open(pred_csv)))
    errs = []
    for r in rows:
        W = int(r["hosts"]) * int(r["ranks_per_host"])
        tag = "%s-%sx%s-%s" % (r["model"], r["hosts"], r["ranks_per_host"], r["rate"])
        ms = [measured_step_ms(os.path.join(runs, d, "metrics.jsonl"), W * int(r["batch"]))
              for d in sorted(os.listdir(runs)) if d.startswith(tag + "-rep")]
        if not ms:
            raise SystemExit("validate: no measured runs for %s" % tag)
        m = statistics.median(ms)
        r["meas_step_ms"] = round(m, 3)
        r["error_pct"] = round(100.0 * (float(r["pred_step_ms"]) - m) / m, 1)
        errs.append(abs(r["error_pct"]))
    with open(out_base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    med, worst = statistics.median(errs), max(errs)
    with open(out_base + ".md", "w") as f:
        f.write("# basin-plan against the simulated cluster (held-out configurations)\n\n")
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        f.write("Date: %s; machine: %s, %d cores; hosts are network namespaces with tc-limited links "
                "(launch/simcluster.sh).\n\n    %s\n\n" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu,
                                                      os.cpu_count() or 0, command))
        f.write("Calibrated only on configurations not predicted: the link terms from basin-bench-allreduce on "
                "2 hosts x 1 rank and 2 hosts x 2 ranks at each rate (`basin-plan calibrate`), the compute terms "
                "from basin-bench-step profiles run as W concurrent processes for each W predicted, so that they "
                "carry the same sharing of this machine's 2 cores as the runs (the planner itself takes real "
                "per-host rates). Weak scaling, 64 samples per rank, hier, 25 MiB buckets.\n\n")
        f.write("Predictions were written before the runs (%s); step = global batch / images/s "
                "over the logging intervals after the first, median of the repeats.\n\n" % os.path.basename(pred_csv))
        f.write("| model | hosts x ranks | link | batch/rank | predicted ms (compute + comm + optim) | "
                "measured ms | error |\n|:--|:--|:--|--:|--:|--:|--:|\n")
        for r in rows:
            f.write("| %s | %sx%s | %s | %s | %s (%s + %s + %s) | %s | %+.1f %% |\n" %
                    (r["model"], r["hosts"], r["ranks_per_host"], r["rate"], r["batch"], r["pred_step_ms"],
                     r["pred_compute_ms"], r["pred_comm_ms"], r["pred_optim_ms"], r["meas_step_ms"], r["error_pct"]))
        f.write("\nMedian absolute error %.1f %% (target <= 10 %%), worst %.1f %% (target <= 25 %%).\n" % (med, worst))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 5))
        for model in sorted(set(r["model"] for r in rows)):
            xs = [float(r["meas_step_ms"]) for r in rows if r["model"] == model]
            ys = [float(r["pred_step_ms"]) for r in rows if r["model"] == model]
            ax.scatter(xs, ys, label=model)
        lim = max(max(float(r["meas_step_ms"]), float(r["pred_step_ms"])) for r in rows) * 1.1
        ax.plot([0, lim], [0, lim], "k--", lw=0.8)
        ax.set_xlabel("measured step (ms)")
        ax.set_ylabel("predicted step (ms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_base + ".png", dpi=120)
    except ImportError:
        pass
    print("validate: median |error| %.1f %%, worst %.1f %%; wrote %s.md/.csv/.png" % (med, worst, out_base))


if __name__ == "__main__":
    if sys.argv[1] == "predict":
        predict(*sys.argv[2:6])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:6])
    else:
        raise SystemExit("validate.py predict|report ...")
