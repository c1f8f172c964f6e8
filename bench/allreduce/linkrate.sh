#!/bin/bash
# What a bare TCP stream carries on the simulated cluster's links, the
# ceiling for any all-reduce there: every host sends to the next one in a
# ring at the same time (iperf3, one stream each, as the ring all-reduce
# does), so each host link carries one stream out and one in.
#
#   bench/allreduce/linkrate.sh [HOSTS [RATE [SECONDS]]]   (defaults 8, 1gbit, 8)
#
# Needs root (launch/simcluster.sh) and iperf3 (Debian: apt-get install
# iperf3). Writes bench/results/allreduce-linkrate.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
hosts=${1:-8}
rate=${2:-1gbit}
secs=${3:-8}
[[ "$hosts" =~ ^[2-8]$ ]] || { echo "linkrate.sh: HOSTS must be 2..8, not '$hosts'" >&2; exit 2; }
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "linkrate.sh: SECONDS must be a positive integer, not '$secs'" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "linkrate.sh: iperf3 is missing (apt-get install iperf3)" >&2; exit 2; }
bits=$(/usr/bin/python3 -c "
import re,sys
m=re.fullmatch(r'(\d+(?:\.\d+)?)(k|m|g)?bit', sys.argv[1].lower())
print(int(float(m.group(1))*{None:1,'k':1e3,'m':1e6,'g':1e9}[m.group(2)]) if m else '')" "$rate")
[ -n "$bits" ] || { echo "linkrate.sh: RATE must look like 1gbit or 250mbit, not '$rate'" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/stream.sh" <<'SH'
#!/bin/sh
# One simulated host: serve one stream, send one to the next host.
r=$OMPI_COMM_WORLD_RANK w=$OMPI_COMM_WORLD_SIZE
next=$(( (r + 1) % w + 1 ))
iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
sleep 2
iperf3 -c "$BASIN_SIM_SUBNET.$next" -p 5201 -t "$1" -O 1 -J >"$2/h$((r + 1)).json"
rc=$?
wait
exit $rc
SH
chmod +x "$work/stream.sh"
launch/simcluster.sh --hosts "$hosts" --ranks-per-host 1 --rate "$rate" -- "$work/stream.sh" "$secs" "$work" \
    </dev/null >"$work/log" 2>&1 || { echo "linkrate.sh: the run failed:" >&2; tail -5 "$work/log" >&2; exit 1; }
/usr/bin/python3 - "$work" "$hosts" "$rate" "$bits" "$secs" >bench/results/allreduce-linkrate.md <<'PY'
import glob, json, statistics, sys, time
work, hosts, rate, bits, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows = []
for h in range(1, hosts + 1):
    d = json.load(open(f"{work}/h{h}.json"))
    e = d["end"]
    rows.append((h, h % hosts + 1, e["sum_received"]["bits_per_second"], e["sum_sent"].get("retransmits", 0)))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# A bare TCP stream on every simulated link at once\n")
print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}, 2 cores; "
      f"{hosts} hosts with tc-limited {rate} links (launch/simcluster.sh).\n")
print(f"    bench/allreduce/linkrate.sh {hosts} {rate} {secs}   (iperf3, one stream from each host to the next, "
      f"all at once, {secs} s after 1 s left out)\n")
print("TCP/IP and Ethernet headers take 66 of every 1514 bytes, so a TCP payload can reach at most 95.6 % of the "
      "link rate. This is the ceiling for an all-reduce's payload on these links.\n")
print("| stream | received (Mbit/s) | of link rate | retransmits |")
print("|:--|---:|---:|---:|")
for a, b, bps, rt in rows:
    print(f"| h{a} -> h{b} | {bps / 1e6:.0f} | {100 * bps / bits:.1f} % | {rt} |")
med = statistics.median(r[2] for r in rows)
print(f"\nMedian {med / 1e6:.0f} Mbit/s = {100 * med / bits:.1f} % of the link rate "
      f"({100 * med / bits / 95.6 * 100:.0f} % of the header-limited 95.6 %).")
PY
cat bench/results/allreduce-linkrate.md
