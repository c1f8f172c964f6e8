"""Turn training metrics (JSON lines) into the accuracy table and plot."""
import argparse
import datetime
import json
import platform
import subprocess


def read_evals(path):
    evals = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("event") == "eval":
                evals.append(rec)
    return evals


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown CPU"
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{model}, {cores} cores"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="name|target%%|command|metrics.jsonl")
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--plot", required=True)
    args = ap.parse_args()
    runs = []
    for spec in args.run:
        name, target, cmd, path = spec.split("|", 3)
        runs.append((name, float(target), cmd, read_evals(path)))

    lines = ["# Test accuracy on Fashion-MNIST", "",
             f"Date: {datetime.date.today()}; machine: {machine()}.", "",
             "| model | epochs | final test accuracy | best | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, target, cmd, evals in runs:
        final = 100 * evals[-1]["test_accuracy"]
        best = 100 * max(e["test_accuracy"] for e in evals)
        lines.append(f"| {name} | {evals[-1]['epoch']} | {final:.2f}% | {best:.2f}% | "
                     f">= {target:.1f}% | {'yes' if final >= target else 'NO'} |")
    lines += ["", "Commands:", ""]
    for name, _, cmd, _ in runs:
        lines.append(f"    {cmd}")
    lines += ["", "Test accuracy after each epoch:", "",
              "| epoch | " + " | ".join(r[0] for r in runs) + " |",
              "| --- |" + " --- |" * len(runs)]
    epochs = max(len(r[3]) for r in runs)
    for i in range(epochs):
        cells = [f"{100 * r[3][i]['test_accuracy']:.2f}%" if i < len(r[3]) else "" for r in runs]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", f"![test accuracy per epoch]({args.plot.split('/')[-1]})", ""]
    with open(args.markdown, "w") as f:
        f.write("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, target, _, evals in runs:
        line, = ax.plot([e["epoch"] for e in evals], [100 * e["test_accuracy"] for e in evals],
                        marker="o", label=name)
        ax.axhline(target, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST test accuracy (dotted: targets)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"wrote {args.markdown} and {args.plot}")


if __name__ == "__main__":
    main()
