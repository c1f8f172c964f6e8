#!/bin/sh
# basin-plan beside published scaling points (Goyal et al. 2017, Sergeev &
# Del Balso 2018): writes bench/results/plan-published.md. No measurement:
# it only runs the planner (seconds). The inputs and where they come from
# are in the table's notes; see that file.
#   bench/plan/published.sh [BUILD_DIR]   (default build-h-plan)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-h-plan}
plan=$build/launch/basin-plan
[ -x "$plan" ] || { echo "published.sh: no $plan (build first)" >&2; exit 2; }
out=$root/bench/results/plan-published.md
R101="conv:64:7:2:3,bn,relu,pool:3:2:1,3*bottleneck:64,bottleneck:128:2,3*bottleneck:128,bottleneck:256:2,22*bottleneck:256,bottleneck:512:2,2*bottleneck:512,gap,fc:1000"

# step HOSTS RANKS_PER_HOST ARGS...: the predicted step in seconds
step() {
    h=$1; r=$2; shift 2
    "$plan" --hosts "$h" --ranks-per-host "$r" --json "$@" |
        /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.5f %.5f %s %g" % (d["step_s"], d["exposed_comm_s"], d["recommended"]["allreduce"], d["recommended"]["bucket_mb"]))'
}

# row LABEL PUBLISHED BASE_HOSTS BASE_RPH HOSTS RPH ARGS...: efficiency of
# HOSTS x RPH against BASE_HOSTS x BASE_RPH
row() {
    label=$1; pub=$2; bh=$3; br=$4; h=$5; r=$6; shift 6
    b=$(step "$bh" "$br" "$@"); s=$(step "$h" "$r" "$@")
    bo=$(step "$bh" "$br" "$@" --no-overlap); so=$(step "$h" "$r" "$@" --no-overlap)
    /usr/bin/python3 - "$label" "$pub" "$b" "$s" "$bo" "$so" <<'PY'
import sys
label, pub, b, s, bo, so = sys.argv[1:]
b, s, bo, so = [x.split() for x in (b, s, bo, so)]
e = float(b[0]) / float(s[0])
eo = float(bo[0]) / float(so[0])
print("| %s | %s | %.1f %% (step %.3f -> %.3f s, exposed all-reduce %.1f ms) | %.1f %% | %s, %s MiB |" %
      (label, pub, 100 * e, float(b[0]), float(s[0]), 1e3 * float(s[1]), 100 * eo, s[2], s[3]))
PY
}

goyal="--model resnet50 --batch 32 --compute-s 0.26 --mem-bw 500 --intra-bw 20 --intra-lat 10 --inter-bw 50 --inter-lat 20 --allreduce hier --bucket-mb 25"
horovod="--model $R101 --input 3x224x224 --classes 1000 --batch 64 --compute-s 0.5 --mem-bw 500 --intra-bw 10 --intra-lat 10 --inter-bw 25 --inter-lat 20 --allreduce ring --bucket-mb 64"
{
cat <<'MD'
# basin-plan beside published scaling points

Written by `bench/plan/published.sh` (it runs only the planner; no
measurement). Efficiency is weak scaling at a fixed per-GPU batch:
step time of the base size / step time of the large size, as both papers
report it. "No overlap" is the same plan with `--no-overlap` (every bucket
waits for the end of backward): a bound from below for a framework whose
reduction does not hide behind backward.

| configuration | published | basin-plan (overlap) | basin-plan, no overlap | recommended |
|:--|:--|:--|:--|:--|
MD
row "Goyal et al.: ResNet-50, 32 img/GPU, 8 -> 256 P100 (32 servers x 8), 50 Gbit/s" "~90 % (8 -> 256)" 1 8 32 8 $goyal
row "Horovod: ResNet-101, 64 img/GPU (assumed), 4 -> 128 Pascal GPUs (32 x 4, assumed), 25 Gbit/s" "~88-90 % (Inception V3, ResNet-101)" 1 4 32 4 $horovod
row "Horovod: the same, efficiency against 1 GPU" "(if their base is 1 GPU)" 1 1 32 4 $horovod
row "Horovod: the same with hier and 25 MiB buckets" "-" 1 4 32 4 $(echo "$horovod" | sed 's/--allreduce ring --bucket-mb 64/--allreduce hier --bucket-mb 25/')
cat <<'MD'

## Commands

```
MD
echo "basin-plan --hosts {1,8,32} --ranks-per-host 8 $goyal"
echo "basin-plan --hosts {1,32} --ranks-per-host 4 $horovod"
echo "# each also with --no-overlap; efficiency = step(base) / step(large)"
cat <<'MD'
```

## Inputs and where they come from

- **Goyal et al. 2017** (Accurate, Large Minibatch SGD): Big Basin servers
  with 8 P100 GPUs, 50 Gbit/s Ethernet between servers, ResNet-50 with 32
  images per GPU, about 0.26 s per iteration at 8 GPUs and about 90 %
  scaling efficiency from 8 to 256 GPUs (the figures this task quotes from
  the paper). basin-plan takes **0.26 s as the compute of one GPU**
  (`--compute-s`: forward + backward of 32 images, split over the layers in
  proportion to basin's own ResNet-50 FLOPs), i.e. it assumes the
  8-GPU iteration is compute-bound. Their all-reduce is the same shape as
  basin's hier: reduce inside the server, recursive halving/doubling between
  servers, gathered back inside, overlapped with backward. Assumed, not from
  the paper: NVLink inside a server as 20 GB/s and 10 us per message, 20 us
  per message between servers, 25 MiB buckets, 500 GB/s for element-wise
  work.
- **Sergeev & Del Balso 2018** (Horovod): Pascal GPUs on 25 Gbit/s
  (RoCE-capable) Ethernet, up to 128 GPUs, about 88-90 % scaling efficiency
  for Inception V3 and ResNet-101 (the figures this task quotes). Not
  certain from our reading, and therefore **assumed**: 4 GPUs per server,
  64 images per GPU, 0.5 s of compute per step for ResNet-101 at that batch
  (a P100 does roughly 125 ResNet-101 images/s in fp32), PCIe inside a
  server as 10 GB/s, ring all-reduce over all GPUs (Horovod's NCCL ring)
  with Horovod's 64 MiB fusion buffer as the bucket. Inception V3 is not
  expressible in basin's model specs; ResNet-101 is (the spec in the
  script, 44.5 M parameters). We are not sure whether Horovod's
  efficiency is against 4 GPUs (one server) or 1 GPU; both rows are shown.

## Why basin-plan predicts more than was measured

basin-plan predicts 95-97 % where the papers measured about 88-90 %. The model
counts only the communication that backward cannot hide, under ideal
overlap: bucket k's reduction starts the moment backward has produced it,
runs at the link rate while the GPU keeps computing, and nothing else
competes for the link, the PCIe bus, the host CPU or the GPU's memory. It
ignores what the measured jobs also paid: data loading and augmentation
per step, stragglers (the slowest of 256 GPUs sets each step; variance grows
with the count), framework overhead per tensor (Horovod negotiates every
tensor through a coordinator each step), the GPU time the reduction kernels
take from backward, TCP's achievable rate below 50 Gbit/s and congestion in
the switch fabric, and the 8-GPU baseline itself, which already includes an
intra-server all-reduce. With no overlap at all the same inputs give 88 %
(ResNet-50, 256 GPUs) and 82-84 % (ResNet-101, 128 GPUs): the published figures sit between the two, closer to
the overlapped end, which is what both papers describe (reduction in
parallel with backward, imperfectly). The compute times above are the
biggest lever: a faster GPU (or a smaller per-GPU batch) shrinks the
backward pass that hides the all-reduce and lowers the efficiency in
proportion. These rows are a plausibility check of the model on published
systems, not a validation; validation against basin's own measurements is
bench/plan/validate.sh.

The recommended 0.25 MiB buckets follow from what the model charges a
bucket: 30 us of request overhead plus its messages' latencies, nothing
for launching reduction kernels or for the GPU time they take, so smaller
buckets only start earlier. On GPUs that is optimistic; treat the
recommendation as "buckets well below the default 25 MiB are not worse
here" rather than as a tuned value.
MD
} > "$out"
echo "published.sh: wrote $out"
