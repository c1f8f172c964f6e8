"""basin-plan's message model against the real all-reduce.

    check_messages.py PLAN_DIR MPIRUN... -- COUNT_MESSAGES W K [K...]

Runs count_messages (PMPI-instrumented) on W ranks for each supernode size
K, and compares every rank's messages and bytes inside and between
supernodes, and its fp16 scale collectives, with what basin_plan.py's
message_counts assumes for the same layout. Any difference fails (exit 1)
with the first lines that differ."""
import subprocess
import sys

plan_dir = sys.argv[1]
sep = sys.argv.index("--")
mpirun = sys.argv[2:sep]
prog, W, Ks = sys.argv[sep + 1], int(sys.argv[sep + 2]), [int(k) for k in sys.argv[sep + 3:]]
sys.path.insert(0, plan_dir)
import basin_plan as bp  # noqa: E402

fails = 0
checked = 0
for K in Ks:
    cmd = mpirun + ["-np", str(W), prog, "--supernode-size", str(K)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("FAIL: %s exited %d\n%s%s" % (" ".join(cmd), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
        sys.exit(1)
    sizes = [K] * (W // K) + ([W % K] if W % K else [])
    layout = bp.Layout(sizes)
    want = {}
    got = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) != 9:
            continue
        algo, wire, n, rank = f[0], f[1], int(f[2]), int(f[3])
        key = (algo, wire, n)
        if key not in want:
            want[key] = bp.message_counts(algo, layout, n, wire)
        m = want[key][rank]
        model = (m["intra"][0], m["intra"][1], m["inter"][0], m["inter"][1], m["scale"])
        real = tuple(int(x) for x in f[4:])
        checked += 1
        if model != real:
            fails += 1
            if fails <= 10:
                print("DIFF layout %s %s wire %s count %d rank %d: real (intra msgs, bytes, inter msgs, bytes, "
                      "scale) %s, model %s" % (",".join(map(str, sizes)), algo, wire, n, rank, real, model))
    if not want:
        print("FAIL: no counts from %s" % " ".join(cmd))
        sys.exit(1)
    print("W=%d layout %s: %d algorithm/wire/count runs compared" % (W, ",".join(map(str, sizes)), len(want)))
print("%d rank lines compared, %d differ" % (checked, fails))
sys.exit(1 if fails else 0)
