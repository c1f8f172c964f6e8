"""basin-plan: predict a basin job's step time, scaling efficiency and the
best all-reduce before booking the machines.

    basin-plan --model cnn --batch 64 --layout 4,4,2 --inter-bw 10 [...]
    basin-plan calibrate --run LAYOUT:WIRE:CSV [...] [--step-profile JSON] -o FILE
    basin-plan messages --allreduce hier --layout 3,2 --count N [--wire W]

The model follows the trainer's schedule (src/core/gradients.c): backward
writes the gradients last layer first; the flat buffer is cut into buckets of
--bucket-mb; a bucket's all-reduce starts when backward has passed its last
layer, the buckets run one after another on the progress thread while
backward goes on, and with the sharded update the owner of each part runs the
optimizer on it inside the request. Each all-reduce is the exact message
schedule of src/allreduce (rhd.c, ring.c, hier.c): every message, its size
and the step it belongs to, with non-power-of-two folding, uneven supernodes
and 16-bit wires. A step costs the slowest of its messages: alpha + bytes/bw
on the level the message crosses, where the bytes leaving one host in a step
share that host's link. The time of one all-reduce is therefore linear in
(alpha_intra, 1/bw_intra, alpha_inter, 1/bw_inter, per-collective overhead),
which is what `calibrate` fits from basin-bench-allreduce runs.

Bad input (impossible layout, zero bandwidth, a batch that does not divide,
a missing or malformed profile): one line on stderr, exit 2.
"""
import argparse
import json
import math
import os
import subprocess
import sys

INT_MAX = 2**31 - 1
RING_PIECE_FLOATS = (512 << 10) // 4       # ring.c RING_PIECE_BYTES / sizeof(float)
RING_MAX_PIECES = 64                       # ring.c
HIER_RING_SHARD_BYTES = 1 << 20            # hier.c: shards of >= 1 MiB go around the ring
ALGOS = ("hier", "rhd", "ring")
BUCKETS_MB = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
WIRE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEFAULT_OVERHEAD_S = 30e-6  # per all-reduce request: queueing it and waking the progress thread
OPT_BYTES_PER_PARAM = 20.0  # SGD with momentum: read grad, param, momentum; write param, momentum


class Refuse(Exception):
    """Bad input: reported as one line, exit 2."""


def refuse(msg):
    raise Refuse(msg)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every refusal."""

    def error(self, message):
        refuse(message)


# ---- topology -------------------------------------------------------------

class Layout:
    """Hosts (supernodes) holding consecutive world ranks, as mpirun places
    them by slot; sizes may differ (4,4,2)."""

    def __init__(self, sizes):
        if not sizes:
            refuse("layout: no hosts")
        for s in sizes:
            if s < 1:
                refuse("layout: every host needs at least one rank (got %s)" % ",".join(map(str, sizes)))
        self.sizes = list(sizes)
        self.world = sum(sizes)
        self.host = []
        self.local = []
        for h, s in enumerate(sizes):
            for l in range(s):
                self.host.append(h)
                self.local.append(l)
        self.first = [sum(sizes[:h]) for h in range(len(sizes))]
        self.S = len(sizes)
        self.Lmin = min(sizes)

    def text(self):
        if len(set(self.sizes)) == 1:
            return "%d host(s) x %d rank(s)" % (self.S, self.sizes[0])
        return "hosts of %s ranks" % ",".join(map(str, self.sizes))


def part_start(n, parts, i):
    """allreduce_part_start: balanced split of n into parts."""
    return (n // parts) * i + (i if i < n % parts else n % parts)


# ---- message schedules (exact) -------------------------------------------
# Each returns a list of steps; a step is a list of messages (src, dst, count)
# in world ranks and elements. Messages of one step may run at once.

def chunks(count, max_msg=INT_MAX):
    """ar_exchange_typed: a count splits into messages of at most max_msg."""
    out = []
    off = 0
    while off < count:
        out.append(min(max_msg, count - off))
        off += max_msg
    return out


def rhd_steps(ranks, n):
    """rhd.c on the communicator whose members are `ranks` (world ranks)."""
    p = len(ranks)
    if n == 0 or p == 1:
        return []
    pof2 = 1
    while pof2 * 2 <= p:
        pof2 *= 2
    extra = p - pof2
    k = pof2.bit_length() - 1
    fold, unfold = [], []
    rs = [[] for _ in range(k)]
    ag = [[] for _ in range(k)]
    for rank in range(p):
        if rank < 2 * extra:
            if rank % 2 == 0:
                fold += [(ranks[rank], ranks[rank + 1], c) for c in chunks(n)]
                continue
            unfold += [(ranks[rank], ranks[rank - 1], c) for c in chunks(n)]
            newrank = rank // 2
        else:
            newrank = rank - extra
        lo, hi = 0, pof2
        for i in range(k):
            mask = 1 << i
            pn = newrank ^ mask
            peer = 2 * pn + 1 if pn < extra else pn + extra
            mid = lo + (hi - lo) // 2
            if newrank & mask:
                klo, khi, slo, shi = mid, hi, lo, mid
            else:
                klo, khi, slo, shi = lo, mid, mid, hi
            keep = part_start(n, pof2, khi) - part_start(n, pof2, klo)
            send = part_start(n, pof2, shi) - part_start(n, pof2, slo)
            rs[i] += [(ranks[rank], ranks[peer], c) for c in chunks(send)]
            ag[i] += [(ranks[rank], ranks[peer], c) for c in chunks(keep)]
            lo, hi = klo, khi
    steps = []
    if fold:
        steps.append(fold)
    steps += rs
    steps += ag[::-1]
    if unfold:
        steps.append(unfold)
    return steps


def ring_pieces(n, p):
    block = (n + p - 1) // p
    C = (block + RING_PIECE_FLOATS - 1) // RING_PIECE_FLOATS
    C = min(C, RING_MAX_PIECES)
    return max(C, 1)


def ring_steps(ranks, n, merge_pieces=True):
    """ring.c: 2(p-1) steps, each of C pieces (empty pieces are sent too).
    merge_pieces: one message per step carrying the step's C pieces (for
    timing: the pieces of a step stream back to back); otherwise every
    piece is a message (for counting)."""
    p = len(ranks)
    if n == 0 or p == 1:
        return []
    C = ring_pieces(n, p)
    off = [part_start(n, p, b) for b in range(p + 1)]
    steps = []
    for phase in (0, 1):
        for k in range(p - 1):
            step = []
            for rank in range(p):
                sb = (rank + phase - k) % p
                blen = off[sb + 1] - off[sb]
                right = ranks[(rank + 1) % p]
                if merge_pieces:
                    step.append((ranks[rank], right, blen))
                else:
                    for j in range(C):
                        step.append((ranks[rank], right, part_start(blen, C, j + 1) - part_start(blen, C, j)))
            steps.append(step)
    return steps


def hier_cross(layout, n, wire):
    """hier.c step 2: per shard j < Lmin, the ranks of local index j in
    every supernode, their shard count and which algorithm runs there."""
    out = []
    if layout.S == 1:
        return out
    for j in range(layout.Lmin):
        cnt = part_start(n, layout.Lmin, j + 1) - part_start(n, layout.Lmin, j)
        if cnt == 0:
            continue
        ranks = [layout.first[h] + j for h in range(layout.S)]
        algo = "ring" if cnt * 4 >= HIER_RING_SHARD_BYTES else "rhd"
        out.append((ranks, cnt, algo))
    return out


def collective_steps(algo, layout, n, wire, merge_pieces=True):
    """Steps of one all-reduce of n floats; concurrent sub-collectives
    (hier's cross communicators) merged step by step."""
    ranks = list(range(layout.world))
    if algo == "rhd":
        return rhd_steps(ranks, n)
    if algo == "ring":
        return ring_steps(ranks, n, merge_pieces)
    if algo == "hier":
        merged = []
        for cranks, cnt, a in hier_cross(layout, n, wire):
            st = ring_steps(cranks, cnt, merge_pieces) if a == "ring" else rhd_steps(cranks, cnt)
            for i, s in enumerate(st):
                if i == len(merged):
                    merged.append([])
                merged[i] += s
        return merged
    refuse("unknown all-reduce '%s' (hier, rhd, ring, mpi)" % algo)


def scale_collectives(algo, layout, n, wire):
    """fp16's scale agreement (wire.c ar_wire_scale): one MPI_Iallreduce of
    one float per run of rhd or ring on >1 rank, on its communicator:
    per world rank, how many, and the size of that communicator."""
    per = [(0, 1)] * layout.world
    if wire != "fp16" or n == 0:
        return per
    if algo in ("rhd", "ring"):
        if layout.world > 1:
            per = [(1, layout.world)] * layout.world
    elif algo == "hier":
        for cranks, cnt, a in hier_cross(layout, n, wire):
            for r in cranks:
                per[r] = (1, len(cranks))
    return per


def message_counts(algo, layout, n, wire):
    """Per world rank: {"intra": [messages, bytes], "inter": [...], "scale": k}
    — what the instrumented run must see (tests/plan)."""
    esize = WIRE_BYTES[wire]
    res = [{"intra": [0, 0], "inter": [0, 0], "scale": 0} for _ in range(layout.world)]
    for step in collective_steps(algo, layout, n, wire, merge_pieces=False):
        for src, dst, cnt in step:
            lvl = "intra" if layout.host[src] == layout.host[dst] else "inter"
            res[src][lvl][0] += 1
            res[src][lvl][1] += cnt * esize
    for r, (k, _) in enumerate(scale_collectives(algo, layout, n, wire)):
        res[r]["scale"] = k
    return res


# ---- time of one all-reduce ----------------------------------------------

COEF_NAMES = ("alpha_intra", "beta_intra", "alpha_inter", "beta_inter", "overhead")


def collective_coef(algo, layout, n, wire, _memo={}):
    """Coefficients c such that time = c . (alpha_i, 1/bw_i, alpha_e, 1/bw_e, o)
    with bandwidths in bytes/s."""
    key = (algo, tuple(layout.sizes), n, wire)
    if key in _memo:
        return _memo[key]
    if algo == "mpi":
        # MPI_Allreduce: Open MPI picks its own algorithm; modelled as rhd
        # (fp32 always: mpi refuses a 16-bit wire).
        c = collective_coef("rhd", layout, n, "fp32")
        _memo[key] = c
        return c
    esize = WIRE_BYTES[wire]
    c = [0.0, 0.0, 0.0, 0.0, 1.0]
    for step in collective_steps(algo, layout, n, wire):
        inter_out = [0] * layout.S
        inter_in = [0] * layout.S
        intra_max = 0
        any_inter = False
        for src, dst, cnt in step:
            b = cnt * esize
            hs, hd = layout.host[src], layout.host[dst]
            if hs == hd:
                intra_max = max(intra_max, b)
            else:
                any_inter = True
                inter_out[hs] += b
                inter_in[hd] += b
        if any_inter:
            # The host links are the bottleneck of a step that crosses them.
            c[2] += 1
            c[3] += max(max(inter_out), max(inter_in))
        else:
            c[0] += 1
            c[1] += intra_max
    if algo == "hier":
        # Steps 1 and 3 in shared memory: the owner of a shard reads it from
        # all L local ranks and writes it; every rank copies the shards it
        # does not own (all of them on a rank beyond the smallest host's
        # size, which owns none); three barriers. The slowest rank counts.
        shard = (n + layout.Lmin - 1) // layout.Lmin
        L = max(layout.sizes)
        if L > 1:
            gathered = layout.Lmin if L > layout.Lmin else layout.Lmin - 1
            c[0] += 3
            c[1] += 4.0 * shard * (L + 1 + gathered)
    k, size = max(scale_collectives(algo, layout, n, wire), key=lambda t: t[1])
    if k:
        lg = math.ceil(math.log2(size))
        c[2 if layout.S > 1 else 0] += 2 * lg
    _memo[key] = c
    return c


def collective_time(coef, links):
    v = (links["intra"]["lat_s"], 1.0 / links["intra"]["bw_Bps"], links["inter"]["lat_s"],
         1.0 / links["inter"]["bw_Bps"], links.get("overhead_s", 0.0))
    return sum(a * b for a, b in zip(coef, v))


# ---- the model's layers and compute --------------------------------------

def find_helper(name):
    here = os.path.dirname(os.path.abspath(__file__))
    p = os.path.join(here, name)
    if os.path.exists(p):
        return p
    return name


def load_model(model, input_shape, classes):
    cmd = [find_helper("basin-plan-model"), "--model", model]
    if input_shape:
        cmd += ["--input", input_shape]
    if classes:
        cmd += ["--classes", str(classes)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise SystemExit("basin-plan: cannot run basin-plan-model: %s" % e)
    if r.returncode == 2:
        refuse(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "model '%s' refused" % model)
    if r.returncode != 0:
        raise SystemExit("basin-plan: basin-plan-model failed: %s" % r.stderr.strip())
    return json.loads(r.stdout)


def load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        refuse("%s %s: %s" % (what, path, e.strerror))
    except ValueError as e:
        refuse("%s %s: not valid JSON (%s)" % (what, path, e))


def check_profile(prof, path):
    """A profile file as calibrate writes it: links and/or compute."""
    if not isinstance(prof, dict) or prof.get("format") != "basin-plan-profile":
        refuse("profile %s: not a basin-plan profile (no \"format\": \"basin-plan-profile\")" % path)
    links = prof.get("links")
    if links is not None:
        for lvl in ("intra", "inter"):
            d = links.get(lvl) if isinstance(links, dict) else None
            if not isinstance(d, dict) or not all(isinstance(d.get(k), (int, float)) for k in ("lat_s", "bw_Bps")) \
                    or d["bw_Bps"] <= 0 or d["lat_s"] < 0:
                refuse("profile %s: links.%s needs lat_s >= 0 and bw_Bps > 0" % (path, lvl))
    comp = prof.get("compute")
    if comp is not None:
        ok = isinstance(comp, dict) and isinstance(comp.get("fwd_s"), list) and isinstance(comp.get("bwd_s"), list) \
            and len(comp["fwd_s"]) == len(comp["bwd_s"]) and isinstance(comp.get("batch"), int) and comp["batch"] > 0 \
            and all(isinstance(x, (int, float)) and x >= 0 for x in comp["fwd_s"] + comp["bwd_s"])
        if not ok:
            refuse("profile %s: compute needs batch > 0 and equal-length fwd_s, bwd_s lists of seconds" % path)
    if links is None and comp is None:
        refuse("profile %s: neither links nor compute" % path)


def layer_times(model, batch, gflops, mem_bw, prof):
    """Per layer (forward order): forward and backward seconds for `batch`
    samples on one rank, and the optimizer's seconds per parameter."""
    layers = model["layers"]
    if prof and prof.get("compute"):
        comp = prof["compute"]
        if len(comp["fwd_s"]) != len(layers) or comp.get("n_params", model["n_params"]) != model["n_params"]:
            refuse("profile: its compute part is for a model of %d layers and %s parameters, not this one "
                   "(%d layers, %d parameters)" % (len(comp["fwd_s"]), comp.get("n_params"), len(layers),
                                                    model["n_params"]))
        s = batch / comp["batch"]
        fwd = [x * s for x in comp["fwd_s"]]
        bwd = [x * s for x in comp["bwd_s"]]
        fwd[-1] += comp.get("loss_s", 0.0) * s
        opt = comp.get("opt_s_per_param", OPT_BYTES_PER_PARAM / mem_bw)
        return fwd, bwd, opt
    fwd, bwd = [], []
    rate = gflops * 1e9
    for l in layers:
        if l["macs"] > 0:
            f = 2.0 * l["macs"] * batch / rate
            b = f * (2.0 if l["need_dx"] else 1.0) if l["params"] else f
        else:
            # element-wise layers: memory traffic of their output
            f = 8.0 * l["out"] * batch / mem_bw
            b = 12.0 * l["out"] * batch / mem_bw
        fwd.append(f)
        bwd.append(b)
    return fwd, bwd, OPT_BYTES_PER_PARAM / mem_bw


# ---- one training step ---------------------------------------------------

def buckets_of(n_params, bucket_mb):
    per = int(bucket_mb * 1048576.0 / 4)
    per = max(per, 1)
    return [(lo, min(lo + per, n_params)) for lo in range(0, n_params, per)]


def step_time(model, layout, fwd, bwd, opt_pp, links, algo, bucket_mb, wire, sharded=True, overlap=True):
    """Predicted step of one rank: dict of total, compute, comm (exposed),
    optim (exposed) seconds."""
    n = model["n_params"]
    F = sum(fwd)
    # ready[i]: time (from the start of backward) at which the prefix grew
    t = 0.0
    events = []
    for i in range(len(model["layers"]) - 1, -1, -1):
        t += bwd[i]
        l = model["layers"][i]
        if l["params"]:
            events.append((t, l["ready"]))
    B = t
    if layout.world == 1:
        o = opt_pp * n
        return {"total": F + B + o, "compute": F + B, "comm": 0.0, "optim": o, "buckets": 1}
    bks = buckets_of(n, bucket_mb)
    end_prev = 0.0
    ends = []
    L = layout.Lmin
    shards_update = sharded and algo == "hier" and max(layout.sizes) > 1 and L > 1
    ei = 0
    for lo, hi in bks:
        if overlap:
            while events[ei][1] < hi:
                ei += 1
            ready = events[ei][0]
        else:
            ready = B
        start = max(ready, end_prev)
        cnt = hi - lo
        d = collective_time(collective_coef(algo, layout, cnt, wire), links)
        if sharded:
            d += opt_pp * (-(-cnt // L) if shards_update else cnt)
        end_prev = start + d
        ends.append((end_prev, cnt))
    total = max(B, end_prev)
    optim = 0.0
    if not sharded:
        # the main thread waits for each bucket and updates it
        tt = B
        for e, cnt in ends:
            tt = max(tt, e) + opt_pp * cnt
            optim += opt_pp * cnt
        total = tt
    elif end_prev > B:
        # the last bucket's update is on the critical path
        lo, hi = bks[-1]
        optim = opt_pp * (-(-(hi - lo) // L) if shards_update else hi - lo)
        optim = min(optim, end_prev - B)
    total += F
    comm = total - F - B - optim
    return {"total": total, "compute": F + B, "comm": max(comm, 0.0), "optim": optim, "buckets": len(bks)}


# ---- command line --------------------------------------------------------

def positive_float(name, v):
    try:
        x = float(v)
    except ValueError:
        refuse("--%s wants a number, not '%s'" % (name, v))
    if not (x > 0) or math.isinf(x):
        refuse("--%s must be > 0 (got %s)" % (name, v))
    return x


def nonneg_float(name, v):
    try:
        x = float(v)
    except ValueError:
        refuse("--%s wants a number, not '%s'" % (name, v))
    if not (x >= 0) or math.isinf(x):
        refuse("--%s must be >= 0 (got %s)" % (name, v))
    return x


def parse_layout(a):
    if a.layout:
        try:
            sizes = [int(x) for x in a.layout.split(",")]
        except ValueError:
            refuse("--layout wants ranks per host, e.g. 4,4,2, not '%s'" % a.layout)
        if a.slots is not None:
            for s in sizes:
                if s > a.slots:
                    refuse("--layout %s: a host with %d ranks, more than its %d slots" % (a.layout, s, a.slots))
        return Layout(sizes)
    hosts = a.hosts if a.hosts is not None else 1
    if hosts < 1:
        refuse("--hosts must be >= 1 (got %d)" % hosts)
    if a.ranks is not None:
        slots = a.slots if a.slots is not None else a.ranks_per_host
        if a.ranks < 1:
            refuse("--ranks must be >= 1 (got %d)" % a.ranks)
        if slots is None:
            slots = -(-a.ranks // hosts)
        if slots < 1:
            refuse("slots per host must be >= 1 (got %d)" % slots)
        if a.ranks > hosts * slots:
            refuse("%d ranks do not fit %d host(s) x %d slot(s)" % (a.ranks, hosts, slots))
        sizes, left = [], a.ranks
        while left > 0:
            sizes.append(min(slots, left))
            left -= slots
        return Layout(sizes)
    r = a.ranks_per_host if a.ranks_per_host is not None else 1
    if r < 1:
        refuse("--ranks-per-host must be >= 1 (got %d)" % r)
    if a.slots is not None and r > a.slots:
        refuse("%d ranks per host, more than its %d slots" % (r, a.slots))
    return Layout([r] * hosts)


def links_of(a, prof):
    links = {"intra": {"lat_s": 1e-6, "bw_Bps": 10e9}, "inter": {"lat_s": 50e-6, "bw_Bps": 10e9 / 8},
             "overhead_s": DEFAULT_OVERHEAD_S}
    if prof and prof.get("links"):
        for lvl in ("intra", "inter"):
            links[lvl] = dict(prof["links"][lvl])
        links["overhead_s"] = float(prof["links"].get("overhead_s", 0.0))
    if a.intra_bw is not None:
        links["intra"]["bw_Bps"] = positive_float("intra-bw", a.intra_bw) * 1e9
    if a.inter_bw is not None:
        links["inter"]["bw_Bps"] = positive_float("inter-bw", a.inter_bw) * 1e9 / 8
    if a.intra_lat is not None:
        links["intra"]["lat_s"] = nonneg_float("intra-lat", a.intra_lat) * 1e-6
    if a.overhead is not None:
        links["overhead_s"] = nonneg_float("overhead", a.overhead) * 1e-6
    if a.inter_lat is not None:
        links["inter"]["lat_s"] = nonneg_float("inter-lat", a.inter_lat) * 1e-6
    return links


def plan_main(argv):
    p = Parser(prog="basin-plan", description="Predict a basin job's step time and scaling.")
    p.add_argument("--model", required=True, help="preset or spec (as basin-train --model)")
    p.add_argument("--input", help="CxHxW of one sample (default: the model's own)")
    p.add_argument("--classes", type=int)
    p.add_argument("--batch", type=int, help="samples per rank per step")
    p.add_argument("--global-batch", type=int, help="samples per step over all ranks (must divide)")
    p.add_argument("--layout", help="ranks per host, e.g. 4,4,2 (uneven allowed)")
    p.add_argument("--hosts", type=int)
    p.add_argument("--ranks-per-host", type=int)
    p.add_argument("--ranks", type=int, help="total ranks, placed by slot over --hosts")
    p.add_argument("--slots", type=int, help="slots per host (refuses layouts that do not fit)")
    p.add_argument("--intra-bw", help="GB/s between ranks of one host (default 10)")
    p.add_argument("--intra-lat", help="us between ranks of one host (default 1)")
    p.add_argument("--inter-bw", help="Gbit/s of each host's link (default 10)")
    p.add_argument("--inter-lat", help="us per message between hosts (default 50)")
    p.add_argument("--overhead", help="us per all-reduce request (default 30)")
    p.add_argument("--gflops", default="50", help="compute rate of one rank, GFLOP/s (default 50)")
    p.add_argument("--compute-s", help="measured forward + backward seconds of one rank's step at this batch: "
                   "the per-layer times are scaled to add up to it")
    p.add_argument("--mem-bw", default="20", help="GB/s of one rank for element-wise work and the optimizer")
    p.add_argument("--profile", help="profile file from `basin-plan calibrate`")
    p.add_argument("--allreduce", default="hier", help="hier, rhd, ring, mpi or auto (= hier)")
    p.add_argument("--bucket-mb", default="4", help="bucket size in MiB (default 4, as basin-train)")
    p.add_argument("--wire", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--no-sharded-update", action="store_true")
    p.add_argument("--no-overlap", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    layout = parse_layout(a)
    W = layout.world
    if a.global_batch is not None:
        if a.global_batch < 1 or a.global_batch % W:
            refuse("--global-batch %d does not divide over %d ranks" % (a.global_batch, W))
        batch = a.global_batch // W
        if a.batch is not None and a.batch != batch:
            refuse("--batch %d and --global-batch %d over %d ranks disagree" % (a.batch, a.global_batch, W))
    else:
        batch = a.batch if a.batch is not None else 64
    if batch < 1:
        refuse("--batch must be >= 1 (got %d)" % batch)
    if a.wire not in WIRE_BYTES:
        refuse("--wire '%s': expected fp32, bf16 or fp16" % a.wire)
    algo = "hier" if a.allreduce == "auto" else a.allreduce
    if algo not in ALGOS + ("mpi",):
        refuse("--allreduce '%s': expected auto, hier, rhd, ring or mpi" % a.allreduce)
    if algo == "mpi" and a.wire != "fp32":
        refuse("--allreduce mpi cannot send a 16-bit wire")
    bucket_mb = positive_float("bucket-mb", a.bucket_mb)
    gflops = positive_float("gflops", a.gflops)
    mem_bw = positive_float("mem-bw", a.mem_bw) * 1e9
    prof = None
    if a.profile:
        prof = load_json(a.profile, "profile")
        check_profile(prof, a.profile)
    links = links_of(a, prof)
    model = load_model(a.model, a.input, a.classes)
    fwd, bwd, opt_pp = layer_times(model, batch, gflops, mem_bw, prof)
    if a.compute_s is not None:
        k = positive_float("compute-s", a.compute_s) / (sum(fwd) + sum(bwd))
        fwd = [x * k for x in fwd]
        bwd = [x * k for x in bwd]
    sharded, overlap = not a.no_sharded_update, not a.no_overlap

    one = step_time(model, Layout([1]), fwd, bwd, opt_pp, links, algo, bucket_mb, a.wire, sharded, overlap)
    res = step_time(model, layout, fwd, bwd, opt_pp, links, algo, bucket_mb, a.wire, sharded, overlap)
    best = None
    table = []
    for al in ALGOS:
        for mb in sorted(set(BUCKETS_MB + (bucket_mb,))):
            r = step_time(model, layout, fwd, bwd, opt_pp, links, al, mb, a.wire, sharded, overlap)
            table.append((al, mb, r["total"]))
            if best is None or r["total"] < best[2] - 1e-12:
                best = (al, mb, r["total"])
    eff = one["total"] / res["total"]
    out = {"model": a.model, "n_params": model["n_params"], "layout": layout.sizes, "ranks": W,
           "batch_per_rank": batch, "allreduce": algo, "bucket_mb": bucket_mb, "wire": a.wire,
           "step_s": res["total"], "compute_s": res["compute"], "exposed_comm_s": res["comm"],
           "optimizer_s": res["optim"], "buckets": res["buckets"],
           "images_per_s": W * batch / res["total"], "one_rank_step_s": one["total"],
           "scaling_efficiency": eff,
           "recommended": {"allreduce": best[0], "bucket_mb": best[1], "step_s": best[2]},
           "links": links}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print("basin-plan: %s (%d parameters, %.3f GMAC/sample), %s = %d ranks, %d samples per rank" %
          (a.model, model["n_params"], model["forward_macs"] / 1e9, layout.text(), W, batch))
    print("links: intra %.3g GB/s, %.3g us; inter %.3g Gbit/s, %.3g us; compute %s" %
          (links["intra"]["bw_Bps"] / 1e9, links["intra"]["lat_s"] * 1e6, links["inter"]["bw_Bps"] * 8 / 1e9,
           links["inter"]["lat_s"] * 1e6,
           "from profile %s" % a.profile if prof and prof.get("compute") else "%.4g GFLOP/s" % gflops))
    print("all-reduce %s, buckets of %g MiB (%d), wire %s, sharded update %s, overlap %s" %
          (algo, bucket_mb, res["buckets"], a.wire, "on" if sharded else "off", "on" if overlap else "off"))
    print("predicted step %.4f s = compute %.4f + exposed communication %.4f + optimizer %.4f" %
          (res["total"], res["compute"], res["comm"], res["optim"]))
    print("images/s %.1f; one rank %.4f s/step (%.1f images/s); scaling efficiency %.1f%%" %
          (W * batch / res["total"], one["total"], batch / one["total"], 100 * eff))
    print("recommended: --allreduce %s --bucket-mb %g (step %.4f s, efficiency %.1f%%)" %
          (best[0], best[1], best[2], 100 * one["total"] / best[2]))
    return 0


def messages_main(argv):
    p = Parser(prog="basin-plan messages",
                                description="Per rank: messages and bytes each all-reduce sends, by level.")
    p.add_argument("--allreduce", required=True)
    p.add_argument("--layout", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--wire", default="fp32")
    a = p.parse_args(argv)
    try:
        layout = Layout([int(x) for x in a.layout.split(",")])
    except ValueError:
        refuse("--layout wants ranks per host, e.g. 3,2, not '%s'" % a.layout)
    if a.wire not in WIRE_BYTES:
        refuse("--wire '%s': expected fp32, bf16 or fp16" % a.wire)
    if a.allreduce not in ALGOS:
        refuse("--allreduce '%s': messages are modelled for hier, rhd and ring" % a.allreduce)
    if a.count < 0:
        refuse("--count must be >= 0")
    for r, c in enumerate(message_counts(a.allreduce, layout, a.count, a.wire)):
        print("%d %d %d %d %d %d" % (r, c["intra"][0], c["intra"][1], c["inter"][0], c["inter"][1], c["scale"]))
    return 0


# ---- calibrate -----------------------------------------------------------

def read_bench_csv(path):
    """basin-bench-allreduce --csv: algo,chosen,ranks,bytes,count,time_us,..."""
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError as e:
        refuse("all-reduce results %s: %s" % (path, e.strerror))
    if not lines or not lines[0].startswith("algo,chosen,ranks,bytes,count,time_us"):
        refuse("all-reduce results %s: not a basin-bench-allreduce --csv file" % path)
    rows = []
    for l in lines[1:]:
        f = l.split(",")
        try:
            rows.append((f[1], int(f[2]), int(f[4]), float(f[5]) * 1e-6))
        except (IndexError, ValueError):
            refuse("all-reduce results %s: malformed line '%s'" % (path, l))
    return rows


def lstsq_nonneg(A, y, free):
    """Least squares with coefficients >= 0: drop negative ones and refit."""
    import numpy as np
    active = list(free)
    x = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if (sol >= 0).all():
            x[active] = sol
            break
        active = [c for c, v in zip(active, sol) if v >= 0]
    return x


def calibrate_main(argv):
    import numpy as np
    p = Parser(prog="basin-plan calibrate",
                                description="Fit link terms from basin-bench-allreduce runs and compute terms "
                                            "from a step profile; write a profile file.")
    p.add_argument("--run", action="append", default=[],
                   help="LAYOUT:WIRE:CSV, e.g. 2,2:fp32:ar-2x2.csv (basin-bench-allreduce --csv)")
    p.add_argument("--step-profile", help="basin-bench-step --profile-json output")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    if not a.run and not a.step_profile:
        refuse("calibrate: give --run and/or --step-profile")
    rows_A, rows_y = [], []
    for spec in a.run:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            refuse("--run wants LAYOUT:WIRE:CSV, not '%s'" % spec)
        try:
            layout = Layout([int(x) for x in parts[0].split(",")])
        except ValueError:
            refuse("--run %s: bad layout" % spec)
        if parts[1] not in WIRE_BYTES:
            refuse("--run %s: wire must be fp32, bf16 or fp16" % spec)
        for algo, ranks, count, t in read_bench_csv(parts[2]):
            if ranks != layout.world:
                refuse("--run %s: the file has %d ranks, the layout %d" % (spec, ranks, layout.world))
            if algo not in ALGOS or t <= 0:
                continue
            c = collective_coef(algo, layout, count, parts[1] if algo != "mpi" else "fp32")
            rows_A.append([x / t for x in c])  # relative error weighting
            rows_y.append(1.0)
    out = {"format": "basin-plan-profile", "version": 1}
    if rows_A:
        A = np.array(rows_A)
        y = np.array(rows_y)
        free = [j for j in range(A.shape[1]) if np.abs(A[:, j]).max() > 0]
        x = lstsq_nonneg(A, y, free)
        pred = A @ x
        err = np.abs(pred - 1.0)
        defaults = {"intra": (1e-6, 10e9), "inter": (50e-6, 1.25e9)}

        def level(ja, jb, name):
            lat = x[ja] if ja in free else defaults[name][0]
            bw = 1.0 / x[jb] if jb in free and x[jb] > 0 else (1e15 if jb in free else defaults[name][1])
            return {"lat_s": float(lat), "bw_Bps": float(bw), "fitted": ja in free or jb in free}
        out["links"] = {"intra": level(0, 1, "intra"), "inter": level(2, 3, "inter"),
                        "overhead_s": float(x[4]),
                        "fit": {"points": len(rows_y), "median_rel_err": float(np.median(err)),
                                "max_rel_err": float(err.max())}}
    if a.step_profile:
        sp = load_json(a.step_profile, "step profile")
        try:
            layers = sp["layers"]
            comp = {"model": sp["model"], "batch": int(sp["batch"]), "n_params": int(sp["n_params"]),
                    "fwd_s": [float(l["fwd_ms"]) * 1e-3 for l in layers],
                    "bwd_s": [float(l["bwd_ms"]) * 1e-3 for l in layers],
                    "loss_s": (float(sp["loss_fwd_ms"]) + float(sp["loss_bwd_ms"])) * 1e-3,
                    "opt_s_per_param": float(sp["sgd_ms"]) * 1e-3 / max(int(sp["n_params"]), 1)}
        except (KeyError, TypeError, ValueError):
            refuse("step profile %s: not basin-bench-step --profile-json output" % a.step_profile)
        out["compute"] = comp
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    if "links" in out:
        L = out["links"]
        print("calibrate: intra %.3g us, %.3g GB/s; inter %.3g us, %.3g Gbit/s; overhead %.3g us; "
              "%d points, median error %.1f%%, worst %.1f%%" %
              (L["intra"]["lat_s"] * 1e6, L["intra"]["bw_Bps"] / 1e9, L["inter"]["lat_s"] * 1e6,
               L["inter"]["bw_Bps"] * 8 / 1e9, L["overhead_s"] * 1e6, L["fit"]["points"],
               100 * L["fit"]["median_rel_err"], 100 * L["fit"]["max_rel_err"]))
    if "compute" in out:
        c = out["compute"]
        print("calibrate: compute of %s at batch %d: forward %.3f ms, backward %.3f ms, optimizer %.3f ns/param" %
              (c["model"], c["batch"], 1e3 * sum(c["fwd_s"]), 1e3 * sum(c["bwd_s"]), 1e9 * c["opt_s_per_param"]))
    print("calibrate: wrote %s" % a.output)
    return 0


def main(argv):
    try:
        if argv and argv[0] == "calibrate":
            return calibrate_main(argv[1:])
        if argv and argv[0] == "messages":
            return messages_main(argv[1:])
        return plan_main(argv)
    except Refuse as e:
        sys.stderr.write("basin-plan: error: %s\n" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
