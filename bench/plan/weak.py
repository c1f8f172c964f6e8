"""bench/plan/weak.sh's second half: reads the runs' metrics.jsonl, asks
basin-plan for its predictions, writes <out>.md (one table) and <out>.png
(one plot). Run by weak.sh with Debian's /usr/bin/python3 (matplotlib)."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

MODELS = ("cnn", "mlp")
MEASURED_HOSTS = (2, 4, 8)
PRED_HOSTS = (1, 2, 4, 8, 16, 32)
PRED_RPH = 8
PRED_LINKS = (10, 100)  # Gbit/s
BATCH = 64


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def intervals(path):
    """Step lines of one run, the first (warm-up) interval left out."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            if d.get("event") == "step":
                rows.append(d)
    rows.sort(key=lambda d: d["step"])
    return rows[1:]


def measured(work, model, hosts, repeats):
    """Medians over the logging intervals of all repeats."""
    step, comp, comm, eff, fb, data = [], [], [], [], [], []
    for rep in range(1, repeats + 1):
        p = os.path.join(work, "runs", "%s-%dx1-rep%d" % (model, hosts, rep), "metrics.jsonl")
        for d in intervals(p):
            c = d["data_wait_mean_s"] + d["forward_mean_s"] + d["backward_mean_s"] + d["optimizer_mean_s"]
            x = d["comm_exposed_mean_s"]
            step.append(BATCH * hosts / d["images_per_s"])
            comp.append(c)
            comm.append(x)
            eff.append(c / (c + x) if c + x > 0 else float("nan"))
            fb.append(d["forward_mean_s"] + d["backward_mean_s"])
            data.append(d["data_wait_mean_s"])
    if not step:
        sys.exit("weak.py: no logging interval after the warm-up one in the %s runs on %d hosts" % (model, hosts))
    return {"step": median(step), "compute": median(comp), "comm": median(comm), "eff": median(eff),
            "fwd_bwd": median(fb), "data": median(data), "n": len(step)}


def plan(exe, args):
    r = subprocess.run([exe] + args + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode != 0:
        sys.exit("weak.py: basin-plan %s: %s" % (" ".join(args), r.stderr.strip()))
    return json.loads(r.stdout)


def busy_fraction(p, data=0.0):
    """basin-plan's counterpart of the measured efficiency: the part of the
    step not waiting on the network (data wait, not modelled, added to both)."""
    return (data + p["step_s"] - p["exposed_comm_s"]) / (data + p["step_s"])


def main():
    ap = argparse.ArgumentParser()
    for k in ("plan", "work", "cmdline", "out"):
        ap.add_argument("--" + k, required=True)
    for k in ("steps", "log-every", "repeats", "calibrated", "quick"):
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--bucket-mb", required=True)
    a = ap.parse_args()
    work = a.work
    common = ["--batch", str(BATCH), "--allreduce", "hier", "--bucket-mb", a.bucket_mb]

    rows = []  # (model, hosts, rph, link label, measured dict or None, plan dict)
    links_note = {}
    for m in MODELS:
        alone = json.load(open(os.path.join(work, "compute-%s.json" % m)))["compute"]
        alone_fb = sum(alone["fwd_s"]) + sum(alone["bwd_s"]) + alone.get("loss_s", 0.0)
        for h in MEASURED_HOSTS:
            meas = measured(work, m, h, a.repeats)
            if a.calibrated:
                link_args = ["--profile", os.path.join(work, "links-%s.json" % m)]
            else:
                link_args = ["--profile", os.path.join(work, "compute-%s.json" % m), "--inter-bw", "1"]
            p = plan(a.plan, ["--model", m, "--hosts", str(h), "--ranks-per-host", "1"] + common + link_args +
                     ["--compute-s", "%.6f" % meas["fwd_bwd"]])
            links_note[m] = p["links"]
            rows.append((m, h, 1, "1 Gbit/s (sim.)", meas, p, busy_fraction(p, meas["data"])))
        for bw in PRED_LINKS:
            for h in PRED_HOSTS:
                p = plan(a.plan, ["--model", m, "--hosts", str(h), "--ranks-per-host", str(PRED_RPH)] + common +
                         ["--profile", os.path.join(work, "compute-%s.json" % m), "--inter-bw", str(bw)])
                rows.append((m, h, PRED_RPH, "%d GbE" % bw, None, p, busy_fraction(p)))
        links_note[m + "-alone"] = alone_fb

    write_md(a, rows, links_note)
    write_png(a, rows)


def fmt_ms(x):
    return "%.1f" % (1e3 * x)


def write_md(a, rows, links_note):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for l in f:
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    cores = os.cpu_count()
    work = a.work
    cmds = []
    with open(os.path.join(work, "commands.txt")) as f:
        for l in f:
            l = l.strip().replace(work, "$WORK")
            l = re.sub(r"-rep\d+", "-repR", l)
            if l not in cmds:
                cmds.append(l)
    L = links_note["cnn"]
    if a.calibrated:
        link_txt = ("links fitted by `basin-plan calibrate` to basin-bench-allreduce (hier, rhd, ring, "
                    "4 KiB .. %s) on 2 simulated hosts x 1 rank at 1 Gbit/s: %.3g Gbit/s, %.3g us per message "
                    "between hosts, %.3g us per request (the 4- and 8-host runs are not part of the fit)" %
                    ("1 MiB" if a.quick else "16 MiB", L["inter"]["bw_Bps"] * 8 / 1e9, L["inter"]["lat_s"] * 1e6,
                     L["overhead_s"] * 1e6))
    else:
        link_txt = ("basin-plan's default link terms (README): 50 us per message between hosts, 30 us per "
                    "request, with `--inter-bw 1` (not calibrated: run without `--no-calibrate` to fit them)")
    out = []
    w = out.append
    w("# Weak scaling across hosts: measured on 2-8 simulated hosts, predicted to 256 ranks\n")
    if a.quick:
        w("**Trial run (`--quick`): too few steps for the numbers to mean anything.**\n")
    w("Date: %s; machine: %s, %d cores; written by `%s` (%d steps per run, metrics every %d steps, the first "
      "interval left out, %d repeat%s; 64 samples per rank; hier all-reduce, %s MiB buckets, "
      "fp32 wire).\n" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu, cores, a.cmdline, a.steps,
                         a.log_every, a.repeats, "" if a.repeats == 1 else "s, interleaved", a.bucket_mb))
    w("## Method\n")
    w("- **Measured** (rows `1 Gbit/s (sim.)`): basin-train on `launch/simcluster.sh`, H = 2, 4, 8 hosts x 1 "
      "rank, links rate-limited to 1 Gbit/s, global batch 64 x H. The simulated hosts share this machine's "
      "%d cores, so images/s per rank falls with H for reasons that are not communication, and the usual "
      "weak-scaling efficiency (step of 1 rank / step of H ranks) would measure the sharing. The efficiency "
      "here is taken inside each run instead: **compute / (compute + exposed communication)**, where compute "
      "is the mean over ranks of data wait + forward + backward + optimizer and exposed communication is the "
      "mean `comm_exposed` (metrics.jsonl), per logging interval, median over the intervals of all repeats. It "
      "is the part of the step not spent waiting on the network; with cores of its own per host it is the "
      "weak-scaling efficiency. Step, compute and exposed communication are the medians of the same intervals "
      "(step = global batch / images/s). Exposed communication also holds the wait for the slowest rank of "
      "the step, which shared cores make larger than a real cluster's. Compute per rank grows with H here (H ranks "
      "share the cores), which lengthens backward and hides more of the all-reduce: read these rows across, "
      "measured against basin-plan for the same run, not down as a real cluster's trend." % cores)
    w("- **basin-plan beside it** (column *basin-plan* of those rows): the same layout, batch, all-reduce and "
      "buckets, with `--compute-s` = the run's measured forward + backward (median), split over the layers "
      "in the proportions of basin-bench-step's profile, optimizer per parameter from that profile; %s. Its "
      "efficiency is (step - exposed communication) / step, the run's measured data wait added to both." %
      link_txt)
    w("- **Predicted** (rows `10 GbE`, `100 GbE`): basin-plan for 1, 2, 4, 8, 16, 32 hosts x 8 ranks per "
      "host (8 .. 256 ranks; 8 ranks is one host, no traffic between hosts, so both links give the same "
      "figure), with one rank's compute measured alone by `basin-bench-step --profile-json` (one process, "
      "one core, not shared: forward + backward of 64 samples %.1f ms for cnn, %.1f ms for mlp), links "
      "`--inter-bw 10` or `100` Gbit/s with the README's defaults otherwise (50 us per message between hosts, "
      "10 GB/s and 1 us inside a host, 30 us per request). Efficiency as above: (step - exposed "
      "communication) / step. It assumes every rank has a core of its own at the measured speed and "
      "ignores what basin-plan ignores (README): stragglers, contention for memory bandwidth among a host's "
      "8 ranks, the switch fabric." % (1e3 * links_note["cnn-alone"], 1e3 * links_note["mlp-alone"]))
    w("- The last column is basin-plan's own scaling efficiency: predicted step of one rank (same compute, "
      "whole optimizer, no all-reduce) / predicted step of the layout. It can exceed 100 %: 8 ranks of a host "
      "share the optimizer inside the overlapped buckets.\n")
    w("| model | hosts x ranks | ranks | links | step (ms) | compute (ms) | exposed comm (ms) | efficiency, "
      "measured | efficiency, basin-plan | basin-plan step (ms) | basin-plan exposed comm (ms) | basin-plan "
      "1 rank / step |")
    w("|:--|:--|---:|:--|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, h, r, link, meas, p, e in rows:
        if meas:
            mc = (fmt_ms(meas["step"]), fmt_ms(meas["compute"]), fmt_ms(meas["comm"]), "%.1f %%" % (100 * meas["eff"]))
        else:
            mc = ("-", "-", "-", "-")
        w("| %s | %d x %d | %d | %s | %s | %s | %s | %s | %.1f %% | %s | %s | %.1f %% |" %
          ((m, h, r, h * r, link) + mc + (100 * e, fmt_ms(p["step_s"]), fmt_ms(p["exposed_comm_s"]),
                                          100 * p["scaling_efficiency"])))
    w("\nPlot: `%s.png` (efficiency against ranks).\n" % os.path.basename(a.out))
    w("## Commands\n")
    w("```")
    w("# $WORK: the script's work directory; R: the repeat")
    out.extend(cmds)
    for m in MODELS:
        if a.calibrated:
            w(a.plan + " --model %s --hosts {2,4,8} --ranks-per-host 1 --batch 64 --allreduce hier --bucket-mb %s "
              "--profile $WORK/links-%s.json --compute-s <measured forward + backward> --json" % (m, a.bucket_mb, m))
        else:
            w(a.plan + " --model %s --hosts {2,4,8} --ranks-per-host 1 --batch 64 --allreduce hier --bucket-mb %s "
              "--profile $WORK/compute-%s.json --inter-bw 1 --compute-s <measured forward + backward> --json" %
              (m, a.bucket_mb, m))
        w(a.plan + " --model %s --hosts {1,2,4,8,16,32} --ranks-per-host 8 --batch 64 --allreduce hier "
          "--bucket-mb %s --profile $WORK/compute-%s.json --inter-bw {10,100} --json" % (m, a.bucket_mb, m))
    w("```")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    print("weak.py: wrote %s.md" % a.out)


def write_png(a, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"cnn": "tab:blue", "mlp": "tab:orange"}
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for m in MODELS:
        sel = [r for r in rows if r[0] == m and r[4] is not None]
        x = [r[1] * r[2] for r in sel]
        ax.plot(x, [100 * r[4]["eff"] for r in sel], "o-", color=colors[m],
                label="%s, measured, 1 Gbit/s simulated (H x 1, shared cores)" % m)
        ax.plot(x, [100 * r[6] for r in sel], "o:", color=colors[m], mfc="none",
                label="%s, basin-plan, same runs" % m)
        for bw, style in zip(PRED_LINKS, ("s--", "^-.")):
            sel = [r for r in rows if r[0] == m and r[3] == "%d GbE" % bw]
            ax.plot([r[1] * r[2] for r in sel], [100 * r[6] for r in sel], style, color=colors[m], alpha=0.8,
                    label="%s, basin-plan, %d GbE (H x 8)" % (m, bw))
    ax.set_xscale("log", base=2)
    ticks = [2, 4, 8, 16, 32, 64, 128, 256]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_ylim(0, 105)
    ax.set_xlabel("ranks")
    ax.set_ylabel("efficiency: compute / (compute + exposed comm), %")
    ax.set_title("Weak scaling, 64 samples per rank: measured and predicted%s" % (" (trial)" if a.quick else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=120)
    print("weak.py: wrote %s.png" % a.out)


if __name__ == "__main__":
    main()
