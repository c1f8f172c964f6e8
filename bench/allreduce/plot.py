#!/usr/bin/env python3
"""Turn basin-bench-allreduce --csv output into a markdown table and a plot.

    plot.py RESULTS.csv [--png OUT.png] [--title TEXT]

Prints a markdown table (busbw in GB/s, one column per algorithm) on stdout
and draws busbw against size (log-log), one line per algorithm, as SVG; the
SVG is converted to PNG with ImageMagick's `convert` when it is installed
(otherwise the .svg is kept beside the requested .png name and a
line on stderr says so).
Only the Python standard library is used.
"""
import argparse
import csv
import math
import os
import shutil
import subprocess
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def load(path):
    rows = list(csv.DictReader(open(path)))
    algos, sizes, busbw = [], [], {}
    for r in rows:
        a, b = r["algo"], int(r["bytes"])
        if a not in algos:
            algos.append(a)
        if b not in sizes:
            sizes.append(b)
        busbw[(a, b)] = float(r["busbw_gbs"])
    return algos, sorted(sizes), busbw


def human(b):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return "%g %s" % (b / div, unit)
    return "%d B" % b


def table(algos, sizes, busbw):
    out = ["| size | " + " | ".join(algos) + " |", "|---:|" + "---:|" * len(algos)]
    for s in sizes:
        out.append("| %s | " % human(s) + " | ".join("%.3f" % busbw.get((a, s), float("nan")) for a in algos) + " |")
    return "\n".join(out)


def svg(algos, sizes, busbw, title):
    W, H, L, R, T, B = 800, 500, 80, 150, 50, 60
    vals = [v for v in busbw.values() if v > 0]
    ylo = 10 ** math.floor(math.log10(min(vals)))
    yhi = 10 ** math.ceil(math.log10(max(vals)))
    xlo, xhi = math.log2(sizes[0]), math.log2(sizes[-1]) if len(sizes) > 1 else math.log2(sizes[0]) + 1

    def X(b):
        return L + (math.log2(b) - xlo) / (xhi - xlo) * (W - L - R)

    def Y(v):
        return H - B - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (H - T - B)

    e = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="25" font-size="15">%s</text>' % (L, title)]
    d = ylo
    while d <= yhi * 1.0001:
        y = Y(d)
        e.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, y, W - R, y))
        e.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 5, y + 4, d))
        d *= 10
    for s in sizes[:: max(1, len(sizes) // 8)]:
        x = X(s)
        e.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (x, T, x, H - B))
        e.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (x, H - B + 18, human(s)))
    e.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>' % (L, T, W - L - R, H - T - B))
    e.append('<text x="%d" y="%d" text-anchor="middle">message size</text>' % ((L + W - R) // 2, H - 15))
    e.append('<text x="20" y="%d" transform="rotate(-90 20 %d)" text-anchor="middle">busbw (GB/s)</text>' % ((T + H - B) // 2, (T + H - B) // 2))
    for i, a in enumerate(algos):
        c = COLORS[i % len(COLORS)]
        pts = " ".join("%.1f,%.1f" % (X(s), Y(busbw[(a, s)])) for s in sizes if busbw.get((a, s), 0) > 0)
        e.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>' % (pts, c))
        y = T + 20 + 20 * i
        e.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>' % (W - R + 15, y, W - R + 40, y, c))
        e.append('<text x="%d" y="%d">%s</text>' % (W - R + 45, y + 4, a))
    e.append("</svg>")
    return "\n".join(e)


def png_matplotlib(algos, sizes, busbw, title, path):
    """Plot with matplotlib (Debian's python3-matplotlib); False when absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for a in algos:
        xs = [s for s in sizes if (a, s) in busbw]
        ax.plot(xs, [busbw[(a, s)] for s in xs], marker="o", label=a)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--png", help="plot file to write")
    ap.add_argument("--title", default="all-reduce busbw")
    o = ap.parse_args()
    algos, sizes, busbw = load(o.csv)
    if not sizes:
        sys.exit("plot.py: no rows in %s" % o.csv)
    print(table(algos, sizes, busbw))
    if o.png and png_matplotlib(algos, sizes, busbw, o.title, o.png):
        return
    if o.png:
        base = os.path.splitext(o.png)[0]
        with open(base + ".svg", "w") as f:
            f.write(svg(algos, sizes, busbw, o.title))
        ok = False
        if shutil.which("convert"):
            ok = subprocess.run(["convert", base + ".svg", o.png], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode == 0 and os.path.exists(o.png)
        if ok:
            os.remove(base + ".svg")
        else:
            print("plot.py: no working ImageMagick convert for SVG -> PNG; wrote %s.svg" % base, file=sys.stderr)


if __name__ == "__main__":
    main()
