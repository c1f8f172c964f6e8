#!/usr/bin/env bash
# basin-eval on the final checkpoint of a small training run:
#  - its loss and accuracy on the first 500 test samples against the
#    trainer's own evaluation of the same weights on the same samples;
#  - 1 rank against 2: the same counts, the same PNG;
#  - the confusion matrix against the counts, the PNG against the matrix;
#  - class names: the data file's class_names (variable- or fixed-length
#    strings) in the table and the JSON, numbers when it has none, and a
#    warning when they do not fit its classes;
#  - each bad input: exit 2, one stderr line, no plot written.
# Usage: eval.sh BASIN_TRAIN BASIN_EVAL GEN_EVAL_DATA DATA MPIRUN...
set -u
train=$1 evaluate=$2 gen=$3 data=$4
shift 4
mpirun=("$@")
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

# ---- 1. a tiny model; its final evaluation covers the first 500 test samples
if ! "$train" --data "$data" --model mlp --limit-train 1000 --limit-test 500 --epochs 1 --batch 50 \
      --output-dir "$work/run" >"$work/train.log" 2>&1; then
  echo "FAILED: basin-train:" >&2; sed 's/^/    /' "$work/train.log" >&2; exit 1
fi
ckpt=$(ls "$work"/run/checkpoints/ckpt-*.h5 | tail -n 1)
grep '"event":"eval"' "$work/run/metrics.jsonl" | tail -n 1 >"$work/trainer.json"

run_eval() { # OUT NP ARGS...: basin-eval on NP ranks (0: without mpirun), stdout to OUT
  local out=$1 np=$2; shift 2
  local cmd=("$evaluate" "$@")
  [ "$np" -gt 0 ] && cmd=("${mpirun[@]}" -np "$np" "${cmd[@]}")
  if ! "${cmd[@]}" >"$out" 2>"$out.err"; then
    fail "basin-eval $* on $np rank(s) exited $?:"; sed 's/^/    /' "$out.err" >&2; return 1
  fi
}

# ---- 2. against the trainer: the same batches (50 samples on one rank), so
# the same float logits; the loss differs only in how its double sums are
# grouped and in the 9 significant digits both print (<= 1e-8 relative).
# 1e-6 allows that with room; a wrong weight, sample or mode (dropout on)
# moves this loss by more than 1e-4. Accuracy: the same count, exactly.
# No --data: the data path recorded in the checkpoint is the default.
run_eval "$work/one50.json" 0 "$ckpt" --limit 500 --batch 50 --json
"$py" - "$work/trainer.json" "$work/one50.json" <<'PY' || fail "basin-eval differs from the trainer's evaluation"
import json, sys
t = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))
ok = True
if e["samples"] != 500: print("samples", e["samples"], "want 500"); ok = False
if e["accuracy"] != t["test_accuracy"]: print("accuracy", e["accuracy"], "trainer", t["test_accuracy"]); ok = False
rel = abs(e["loss"] - t["test_loss"]) / abs(t["test_loss"])
if not rel <= 1e-6: print("loss", e["loss"], "trainer", t["test_loss"], "relative", rel); ok = False
sys.exit(0 if ok else 1)
PY

# ---- 3. 1 rank against 2, at the default batch (256): a rank's forward
# passes group the samples differently (250 a rank against 256 + 244), and
# the gemm's float sums with them, so a logit may differ in its last bit
# (~6e-8 relative): the mean loss agrees to 1e-6 relative. No sample of this
# split is that close to a tie between two classes: the counts are equal.
run_eval "$work/one.json" 0 "$ckpt" --data "$data" --limit 500 --json --plot "$work/one.png"
run_eval "$work/two.json" 2 "$ckpt" --data "$data" --limit 500 --json --plot "$work/two.png"
run_eval "$work/two.txt" 2 "$ckpt" --data "$data" --limit 500
"$py" - "$work/one.json" "$work/two.json" "$work/two.txt" "$work/one.png" <<'PY' || fail "1 and 2 ranks, or the matrix, PNG or table"
import json, struct, sys, zlib
one = json.load(open(sys.argv[1])); two = json.load(open(sys.argv[2])); text = open(sys.argv[3]).read()
ok = True
def bad(*a):
    global ok
    print(*a); ok = False
for key in ("samples", "correct", "accuracy", "confusion", "per_class", "split"):
    if one[key] != two[key]: bad(key, "differs: 1 rank", one[key], "2 ranks", two[key])
rel = abs(one["loss"] - two["loss"]) / abs(one["loss"])
if not rel <= 1e-6: bad("loss: 1 rank", one["loss"], "2 ranks", two["loss"], "relative", rel)
# ---- 4. the matrix against the counts
cm = one["confusion"]; k = len(cm); n = one["samples"]
if k != 10 or any(len(r) != k for r in cm): bad("confusion matrix is not 10 x 10")
if sum(map(sum, cm)) != n: bad("confusion sums to", sum(map(sum, cm)), "not", n)
diag = sum(cm[i][i] for i in range(k))
if diag != one["correct"] or diag / n != one["accuracy"]: bad("diagonal", diag, "accuracy", one["accuracy"])
for i, c in enumerate(one["per_class"]):
    if c["samples"] != sum(cm[i]) or c["correct"] != cm[i][i]: bad("per_class", i, c)
# the table of 2 ranks says what their JSON says
for want in ("loss        %.9g" % two["loss"], "accuracy    %.9g" % two["accuracy"]):
    if want not in text: bad("table lacks", repr(want))
# the PNG: signature, IHDR (320 x 320, 8-bit grayscale), and each cell's
# brightness its share of the row
png = open(sys.argv[4], "rb").read()
if png[:8] != b"\x89PNG\r\n\x1a\n": bad("not a PNG signature")
w, h, depth, color = struct.unpack(">IIBB", png[16:26])
if png[12:16] != b"IHDR" or (w, h, depth, color) != (320, 320, 8, 0): bad("IHDR", w, h, depth, color)
pos, idat = 8, b""
while pos < len(png):
    ln, = struct.unpack(">I", png[pos:pos + 4]); typ = png[pos + 4:pos + 8]
    body = png[pos + 8:pos + 8 + ln]
    if struct.unpack(">I", png[pos + 8 + ln:pos + 12 + ln])[0] != zlib.crc32(typ + body): bad("CRC of", typ)
    if typ == b"IDAT": idat += body
    pos += 12 + ln
raw = zlib.decompress(idat)
if len(raw) != h * (w + 1): bad("IDAT holds", len(raw), "bytes")
else:
    for t in range(k):
        for p in range(k):
            y, x = t * 32 + 16, p * 32 + 16
            want = int(255 * cm[t][p] / sum(cm[t]) + 0.5)
            if raw[y * (w + 1) + 1 + x] != want: bad("pixel of cell", t, p, raw[y * (w + 1) + 1 + x], "want", want)
sys.exit(0 if ok else 1)
PY
cmp -s "$work/one.png" "$work/two.png" || fail "the PNG of 2 ranks differs from that of 1"
ls "$work"/*.tmp >/dev/null 2>&1 && fail "a temporary plot file was left behind"

# ---- 5. class names: Fashion-MNIST's (variable-length strings) in the
# JSON and the table; a file without them; fixed-length ones; ones that do
# not fit the classes (a warning, numbers shown).
"$gen" "$work" || { echo "FAILED: gen_eval_data" >&2; exit 1; }
"$py" - "$work" <<'PY' || fail "cannot add class names to the generated data"
import sys, shutil, h5py, numpy as np
w = sys.argv[1]
shutil.copy(w + "/plain.h5", w + "/fixed.h5"); shutil.copy(w + "/plain.h5", w + "/short.h5")
with h5py.File(w + "/fixed.h5", "r+") as f:
    f.attrs["class_names"] = np.array([b"zero", b"one", b"two", b"three", b"four", b"five", b"six", b"seven",
                                       b"eight", "n\u00efne".encode()], dtype="S8")
with h5py.File(w + "/short.h5", "r+") as f:
    f.attrs["class_names"] = np.array([b"a", b"b", b"c"], dtype="S2")
PY
run_eval "$work/plain.json" 0 "$ckpt" --data "$work/plain.h5" --json
run_eval "$work/plain.txt" 0 "$ckpt" --data "$work/plain.h5"
run_eval "$work/fixed.json" 0 "$ckpt" --data "$work/fixed.h5" --json
run_eval "$work/fixed.txt" 0 "$ckpt" --data "$work/fixed.h5"
run_eval "$work/short.json" 0 "$ckpt" --data "$work/short.h5" --json
grep -q "short.h5: its class_names attribute is not a list of 10 strings; classes are shown by number" \
  "$work/short.json.err" || fail "class names of the wrong count: no warning ($(cat "$work/short.json.err"))"
"$py" - "$work" <<'PY' || fail "class names"
import json, sys
w = sys.argv[1]
ok = True
def bad(*a):
    global ok
    print(*a); ok = False
fm = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
one = json.load(open(w + "/one.json"))
if one["class_names"] != fm: bad("Fashion-MNIST names", one["class_names"])
if [c.get("name") for c in one["per_class"]] != fm: bad("per_class names", one["per_class"])
text = open(w + "/two.txt").read()
if "class  name         samples" not in text or "    9  Ankle boot " not in text: bad("table without names:\n" + text)
for name in ("plain", "short"):
    j = json.load(open(w + "/%s.json" % name))
    if j["class_names"] is not None or any("name" in c for c in j["per_class"]): bad(name, "has names", j)
if "name" in open(w + "/plain.txt").read(): bad("the table of plain.h5 has a name column")
fixed = json.load(open(w + "/fixed.json"))
want = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "n\u00efne"]
if fixed["class_names"] != want: bad("fixed-length names", fixed["class_names"])
if "    9  n\u00efne     " not in open(w + "/fixed.txt", encoding="utf-8").read(): bad("fixed.txt:", open(w + "/fixed.txt").read())
sys.exit(0 if ok else 1)
PY

# ---- 6. bad input: exit 2, one line on stderr (one per job on 2 ranks), no plot
head -c 20000 "$ckpt" >"$work/truncated.h5"
printf 'not a checkpoint\n' >"$work/text.h5"
expect_refusal() { # NAME PATTERN NP ARGS...
  local name=$1 pattern=$2 np=$3; shift 3
  local cmd=("$evaluate" --plot "$work/bad.png" "$@")
  [ "$np" -gt 0 ] && cmd=("${mpirun[@]}" -np "$np" "${cmd[@]}")
  "${cmd[@]}" >"$work/out" 2>"$work/err"
  local rc=$? lines
  # mpirun adds its own banner about the exit code: count basin's lines
  lines=$(grep -c '^basin' "$work/err")
  [ "$np" -eq 0 ] && lines=$(wc -l <"$work/err")
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q -- "$pattern" "$work/err"; then
    fail "$name ($np rank(s)): exit $rc, $lines stderr line(s), want 2 / 1 line matching '$pattern':"
    sed 's/^/    /' "$work/err" >&2
  fi
  if [ -s "$work/out" ] || ls "$work"/bad.png* >/dev/null 2>&1; then
    fail "$name: wrote output or a plot"; rm -f "$work"/bad.png*
  fi
}
for np in 0 2; do
  expect_refusal "missing checkpoint" "nowhere.h5" $np "$work/nowhere.h5"
  expect_refusal "truncated checkpoint" "truncated.h5" $np "$work/truncated.h5"
  expect_refusal "data of another shape" "1x14x14" $np "$ckpt" --data "$work/shape.h5"
  expect_refusal "bad split" "--split 'bogus'" $np "$ckpt" --split bogus
  expect_refusal "zero batch" "--batch '0'" $np "$ckpt" --batch 0
done
expect_refusal "not a checkpoint" "text.h5" 0 "$work/text.h5"
expect_refusal "data in other classes" "7 classes" 0 "$ckpt" --data "$work/classes.h5"
expect_refusal "data not HDF5" "text.h5" 0 "$ckpt" --data "$work/text.h5"
expect_refusal "a checkpoint as data" "missing split" 0 "$ckpt" --data "$ckpt"
expect_refusal "train split missing" "missing split" 0 "$ckpt" --data "$work/shape.h5" --split train
expect_refusal "negative limit" "--limit '-3'" 0 "$ckpt" --limit -3
expect_refusal "junk batch" "--batch '8x'" 0 "$ckpt" --batch 8x
expect_refusal "unknown option" "--bogus" 0 "$ckpt" --bogus
expect_refusal "missing value" "--split" 0 "$ckpt" --split
expect_refusal "no checkpoint" "no checkpoint" 0 --json
expect_refusal "two checkpoints" "unexpected argument" 0 "$ckpt" "$ckpt"
expect_refusal "bad device" "--device 'gpu'" 0 "$ckpt" --device gpu
# (BASIN_HOST_CUDA_DEVICES=0: a sanitizer build runs the CUDA backend on
# the CPU, cuda/host, and shows it no device)
if ! ls /dev/nvidia0 >/dev/null 2>&1; then
  export BASIN_HOST_CUDA_DEVICES=0
  expect_refusal "no GPU" "device cuda" 0 "$ckpt" --device cuda
  unset BASIN_HOST_CUDA_DEVICES
fi
# The plot's folder is missing: refused, nothing printed, no file left.
"$evaluate" "$ckpt" --limit 50 --plot "$work/no/such/dir/p.png" >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" != 2 ] || [ "$(wc -l <"$work/err")" != 1 ] || [ -s "$work/out" ]; then
  fail "unwritable plot: exit $rc, $(wc -l <"$work/err") stderr line(s), $(wc -c <"$work/out") bytes out"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "basin-eval: all checks passed"
