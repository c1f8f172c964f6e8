"""Report of a resnet20 accuracy run: the per-epoch test accuracy as a
table and a curve, the final accuracy against the 94.0 % target.

    resnet20_report.py METRICS.jsonl LOG COMMAND OUT.md OUT.png
"""
import json
import subprocess
import sys
import time

metrics, log, command, out_md, out_png = sys.argv[1:6]
evals = [e for e in (json.loads(l) for l in open(metrics)) if e.get("event") == "eval"]
steps = [e for e in (json.loads(l) for l in open(metrics)) if e.get("event") == "step"]
if not evals:
    sys.exit("resnet20_report: no evaluation in " + metrics)
final = evals[-1]["test_accuracy"]
best = max(e["test_accuracy"] for e in evals)
hours = steps[-1]["time_s"] / 3600 if steps else float("nan")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [
    "# resnet20 on Fashion-MNIST: test accuracy after 30 epochs, 2 ranks",
    "",
    f"Date: {time.strftime('%Y-%m-%d', time.gmtime())}; machine: {cpu}, 2 cores, shared with other work during the "
    f"run (wall time {hours:.2f} h is not a speed figure).",
    "",
    "    " + command,
    "",
    f"Final test accuracy: **{100 * final:.2f} %** (best epoch {100 * best:.2f} %); target >= 94.0 %: "
    f"{'met' if final >= 0.94 else 'NOT met'}.",
    "",
    "| epoch | test loss | test accuracy |",
    "| ---: | ---: | ---: |",
]
for e in evals:
    lines.append(f"| {e['epoch']} | {e['test_loss']:.4f} | {100 * e['test_accuracy']:.2f} % |")
lines += ["", "![test accuracy per epoch](accuracy-resnet20.png)", ""]
open(out_md, "w").write("\n".join(lines))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["epoch"] for e in evals], [100 * e["test_accuracy"] for e in evals], marker="o", ms=3)
    ax.axhline(94.0, color="gray", ls="--", lw=1, label="target 94.0 %")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("resnet20, Fashion-MNIST, 2 ranks, crop:2,flip")
    ax.set_ylim(80, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
except ImportError:
    print("resnet20_report: no matplotlib: no plot")
