"""basin-plan: its arithmetic on hand-computed cases, calibrate's fit on
times it must recover, and the refusals (one line, exit 2).

    test_plan.py PLAN_DIR      (the build tree's launch/)"""
import json
import os
import subprocess
import sys
import tempfile

plan_dir = sys.argv[1]
sys.path.insert(0, plan_dir)
import basin_plan as bp  # noqa: E402

fails = 0


def check(cond, what):
    global fails
    if not cond:
        fails += 1
        print("FAIL: " + what)


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


# ---- all-reduce coefficients, by hand -----------------------------------
# rhd, 4 hosts x 1 rank, 1000 floats: reduce-scatter 500 then 250 floats,
# all-gather 250 then 500; every step crosses hosts: 4 latencies, 6000 B.
check(bp.collective_coef("rhd", bp.Layout([1, 1, 1, 1]), 1000, "fp32") == [0, 0, 4, 6000, 1],
      "rhd 4x1 1000 floats: %s" % bp.collective_coef("rhd", bp.Layout([1, 1, 1, 1]), 1000, "fp32"))
# rhd on 3 ranks folds: rank 0 sends 1000 floats to 1 (fold), then 1 and 2
# run p'=2 (500 + 500), then 1 sends 1000 back: 4 steps, 4000+2000+2000+4000 B.
check(bp.collective_coef("rhd", bp.Layout([1, 1, 1]), 1000, "fp32") == [0, 0, 4, 12000, 1],
      "rhd 3x1 folding: %s" % bp.collective_coef("rhd", bp.Layout([1, 1, 1]), 1000, "fp32"))
# The same with bf16 on the wire: half the bytes.
check(bp.collective_coef("rhd", bp.Layout([1, 1, 1]), 1000, "bf16") == [0, 0, 4, 6000, 1], "rhd 3x1 bf16")
# ring, 2 hosts x 2 ranks, 1000 floats: blocks of 250, one piece; 6 steps,
# each with one message of 1000 B leaving each host.
check(bp.collective_coef("ring", bp.Layout([2, 2]), 1000, "fp32") == [0, 0, 6, 6000, 1], "ring 2x2")
# ring inside one host: 6 intra steps of 1000 B.
check(bp.collective_coef("ring", bp.Layout([4]), 1000, "fp32") == [6, 6000, 0, 0, 1], "ring 1x4")
# hier, 2 hosts x 2 ranks, 1000 floats: 2 shards of 500; two concurrent rhd
# of 2 ranks (250 floats each way, twice) -> 2 inter steps of 2 x 1000 B per
# host; shared memory: 3 barriers, 4 (500 x 3 + 500 x 1) = 8000 B.
check(bp.collective_coef("hier", bp.Layout([2, 2]), 1000, "fp32") == [3, 8000, 2, 4000, 1],
      "hier 2x2: %s" % bp.collective_coef("hier", bp.Layout([2, 2]), 1000, "fp32"))
# fp16 adds the scale agreement: 2 ceil(log2 2) = 2 latencies between hosts.
check(bp.collective_coef("hier", bp.Layout([2, 2]), 1000, "fp16") == [3, 8000, 4, 2000, 1], "hier 2x2 fp16")
# uneven supernodes 3,2: Lmin = 2 shards; local rank 2 of host 0 owns none.
mc = bp.message_counts("hier", bp.Layout([3, 2]), 1000, "fp32")
check(mc[2] == {"intra": [0, 0], "inter": [0, 0], "scale": 0}, "hier 3,2: local rank 2 sends nothing")
check(mc[0]["inter"] == [2, 2000] and mc[3]["inter"] == [2, 2000], "hier 3,2: shard owners: %s" % mc)

# time of a collective: 4 alpha 10 us + 6000 B at 1e9 B/s = 46 us
links = {"intra": {"lat_s": 1e-6, "bw_Bps": 1e10}, "inter": {"lat_s": 1e-5, "bw_Bps": 1e9}, "overhead_s": 0.0}
check(close(bp.collective_time([0, 0, 4, 6000, 1], links), 46e-6), "collective_time")

# ---- one step, by hand --------------------------------------------------
# Two layers of 100 parameters; the buffer holds layer 1 first (ready at
# 100 after its backward, 1 s) and layer 0 (ready at 200, 2 s). Buckets of
# 100 floats. rhd on 2 hosts x 1 rank of 100 floats: 2 steps of 200 B:
# 2 x 0.1 s + 400 B / 400 B/s = 1.2 s, plus its update 100 x 1 ms = 0.1 s.
# bucket 0: 1.0 -> 2.3; bucket 1: 2.3 -> 3.6; + forward 1.0 = 4.6 s;
# exposed optimizer 0.1, exposed communication 4.6 - 3 - 0.1 = 1.5.
model = {"n_params": 200, "layers": [{"params": 100, "ready": 200, "need_dx": 0, "macs": 1, "out": 1},
                                     {"params": 100, "ready": 100, "need_dx": 1, "macs": 1, "out": 1}]}
slow = {"intra": {"lat_s": 0.0, "bw_Bps": 1e12}, "inter": {"lat_s": 0.1, "bw_Bps": 400.0}, "overhead_s": 0.0}
r = bp.step_time(model, bp.Layout([1, 1]), [0.5, 0.5], [1.0, 1.0], 1e-3, slow, "rhd", 400 / 1048576.0, "fp32")
check(close(r["total"], 4.6) and close(r["optim"], 0.1) and close(r["comm"], 1.5) and r["buckets"] == 2,
      "hand step: %s" % r)
one = bp.step_time(model, bp.Layout([1]), [0.5, 0.5], [1.0, 1.0], 1e-3, slow, "rhd", 400 / 1048576.0, "fp32")
check(close(one["total"], 3.2), "one rank: %s" % one)
# Without overlap both buckets wait for the end of backward (2.0):
# 2.0 -> 3.3 -> 4.6, + 1.0 = 5.6 s.
r = bp.step_time(model, bp.Layout([1, 1]), [0.5, 0.5], [1.0, 1.0], 1e-3, slow, "rhd", 400 / 1048576.0, "fp32",
                 overlap=False)
check(close(r["total"], 5.6), "no overlap: %s" % r)
# Not sharded: buckets only sum (1.2 s each: 1.0 -> 2.2 -> 3.4), then the
# main thread updates each (0.1 s): 3.5 s, + 1.0 = 4.5 s.
r = bp.step_time(model, bp.Layout([1, 1]), [0.5, 0.5], [1.0, 1.0], 1e-3, slow, "rhd", 400 / 1048576.0, "fp32",
                 sharded=False)
check(close(r["total"], 4.5) and close(r["optim"], 0.2), "not sharded: %s" % r)

# ---- calibrate recovers the link terms it is given ------------------------
tmp = tempfile.mkdtemp()
truth = {"intra": {"lat_s": 3e-6, "bw_Bps": 5e9}, "inter": {"lat_s": 80e-6, "bw_Bps": 1.2e8}, "overhead_s": 20e-6}
runs = []
for sizes in ([1, 1, 1, 1], [2, 2], [3, 2]):
    lay = bp.Layout(sizes)
    path = os.path.join(tmp, "ar-%s.csv" % "-".join(map(str, sizes)))
    with open(path, "w") as f:
        f.write("algo,chosen,ranks,bytes,count,time_us,algbw_gbs,busbw_gbs,wrong\n")
        for algo in ("hier", "rhd", "ring"):
            for count in (1024, 16384, 262144, 1048576, 4194304):
                t = bp.collective_time(bp.collective_coef(algo, lay, count, "fp32"), truth)
                f.write("%s,%s,%d,%d,%d,%.6f,0,0,0\n" % (algo, algo, lay.world, 4 * count, count, t * 1e6))
    runs += ["--run", "%s:fp32:%s" % (",".join(map(str, sizes)), path)]
prof = os.path.join(tmp, "prof.json")
cmd = [os.path.join(plan_dir, "basin-plan"), "calibrate"] + runs + ["-o", prof]
r = subprocess.run(cmd, capture_output=True, text=True)
check(r.returncode == 0, "calibrate exit %d: %s" % (r.returncode, r.stderr))
if r.returncode == 0:
    got = json.load(open(prof))["links"]
    for lvl in ("intra", "inter"):
        for k in ("lat_s", "bw_Bps"):
            check(close(got[lvl][k], truth[lvl][k], 1e-3), "calibrate %s %s: %g, want %g" %
                  (lvl, k, got[lvl][k], truth[lvl][k]))
    r = subprocess.run([os.path.join(plan_dir, "basin-plan"), "--model", "mlp", "--layout", "2,2", "--profile", prof,
                        "--json"], capture_output=True, text=True)
    check(r.returncode == 0 and close(json.loads(r.stdout)["links"]["inter"]["bw_Bps"], 1.2e8, 1e-3),
          "plan with the calibrated profile: %s %s" % (r.stdout[-300:], r.stderr))

# ---- the command: a plan prints its parts --------------------------------
r = subprocess.run([os.path.join(plan_dir, "basin-plan"), "--model", "cnn", "--layout", "4,4,2", "--batch", "32",
                    "--inter-bw", "1", "--json"], capture_output=True, text=True)
check(r.returncode == 0, "plan cnn 4,4,2: %s" % r.stderr)
if r.returncode == 0:
    d = json.loads(r.stdout)
    check(d["ranks"] == 10 and close(d["step_s"], d["compute_s"] + d["exposed_comm_s"] + d["optimizer_s"], 1e-9),
          "plan parts add up: %s" % d)
    check(0 < d["scaling_efficiency"] and d["recommended"]["allreduce"] in ("hier", "rhd", "ring"), "plan result")

# uneven hosts 3,2 with hier: shards of 500 over Lmin = 2; the slowest rank
# in shared memory reads 3 shards and writes 1 (an owner on the 3-rank host)
# and local rank 2, which owns none, copies both: 4 (500 x 4 + 500 x 2) B.
check(bp.collective_coef("hier", bp.Layout([3, 2]), 1000, "fp32")[:2] == [3, 12000],
      "hier 3,2 shared memory: %s" % bp.collective_coef("hier", bp.Layout([3, 2]), 1000, "fp32"))

# ---- a measured step profile: basin-bench-step --profile-json -> calibrate -> plan
if len(sys.argv) > 2:
    sp = os.path.join(tmp, "step.json")
    r = subprocess.run([sys.argv[2], "--model", "mlp", "--batch", "8", "--steps", "2", "--repeats", "1",
                        "--warmup", "1", "--profile-json", sp], capture_output=True, text=True)
    check(r.returncode == 0, "basin-bench-step --profile-json: %s" % r.stderr)
    cp = os.path.join(tmp, "compute.json")
    r = subprocess.run([os.path.join(plan_dir, "basin-plan"), "calibrate", "--step-profile", sp, "-o", cp],
                       capture_output=True, text=True)
    check(r.returncode == 0, "calibrate --step-profile: %s" % r.stderr)
    if r.returncode == 0:
        comp = json.load(open(cp))["compute"]
        check(comp["batch"] == 8 and len(comp["fwd_s"]) == 6 and sum(comp["bwd_s"]) > 0, "compute: %s" % comp)
        r = subprocess.run([os.path.join(plan_dir, "basin-plan"), "--model", "mlp", "--batch", "16", "--layout", "2",
                            "--profile", cp, "--json"], capture_output=True, text=True)
        check(r.returncode == 0, "plan with a step profile: %s" % r.stderr)
        if r.returncode == 0:
            d = json.loads(r.stdout)
            want = 2 * (sum(comp["fwd_s"]) + sum(comp["bwd_s"]) + comp["loss_s"])  # batch 16 = 2 x 8
            check(close(d["compute_s"], want, 1e-6), "profile compute scaled by batch: %s vs %s" %
                  (d["compute_s"], want))
        r = subprocess.run([os.path.join(plan_dir, "basin-plan"), "--model", "cnn", "--layout", "2", "--profile", cp],
                           capture_output=True, text=True)
        check(r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, "a profile of another model: %s" %
              r.stderr)

# ---- refusals: one line on stderr, exit 2 --------------------------------
bad_json = os.path.join(tmp, "bad.json")
with open(bad_json, "w") as f:
    f.write("{not json")
wrong_kind = os.path.join(tmp, "wrong.json")
with open(wrong_kind, "w") as f:
    f.write('{"format": "basin-plan-profile", "links": {"intra": {"lat_s": 1e-6, "bw_Bps": 0}}}')
base = [os.path.join(plan_dir, "basin-plan"), "--model", "mlp"]
for args, why in (
        (["--layout", "4,0,2"], "a host with zero ranks"),
        (["--hosts", "2", "--slots", "4", "--ranks", "9"], "more ranks than hosts x slots"),
        (["--hosts", "2", "--ranks", "0"], "zero ranks"),
        (["--layout", "4,4", "--slots", "3"], "a host beyond its slots"),
        (["--layout", "2,2", "--inter-bw", "0"], "zero bandwidth"),
        (["--layout", "2,2", "--intra-bw", "-1"], "negative bandwidth"),
        (["--layout", "2,2", "--global-batch", "10"], "a batch that does not divide"),
        (["--layout", "2,2", "--profile", os.path.join(tmp, "missing.json")], "a missing profile"),
        (["--layout", "2,2", "--profile", bad_json], "a malformed profile"),
        (["--layout", "2,2", "--profile", wrong_kind], "a profile with a zero bandwidth"),
        (["--layout", "2,2", "--allreduce", "tree"], "an unknown algorithm"),
        (["--layout", "2,2", "--wire", "fp8"], "an unknown wire"),
        (["--model", "nosuchmodel:3"], "a bad model"),
        (["--layout", "2,2", "--bogus"], "an unknown option")):
    r = subprocess.run(base + args, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2 and len(lines) == 1 and not r.stdout,
          "refuse %s: exit %d, stderr %r, stdout %r" % (why, r.returncode, r.stderr, r.stdout[:200]))

print("test_plan: %d failure(s)" % fails)
sys.exit(1 if fails else 0)
