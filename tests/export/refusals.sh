#!/usr/bin/env bash
# Version-1 checkpoints and bad input:
#  - a version-1 copy of a trained mlp (ckpt_tool v1: no layer table, no
#    state) evaluates as the version-2 file does, exports to the same
#    numbers, and resumes training;
#  - batch norm's running statistics survive a resume bit for bit;
#  - a version-1 file of a model with batch norm (its running statistics
#    cannot be stored) is refused by basin-eval and basin-export, naming
#    what is missing;
#  - basin-export refuses, with exit 2, one stderr line and no file written
#    (an existing output untouched, no temporary file left): another format
#    version, damaged files (a flipped data byte, a flipped layer-table byte,
#    truncation, not HDF5, missing), tables it cannot build (an unknown
#    kind, a gap or overlap in the offsets, pooling padding past half the window), bad
#    options, and outputs it cannot write.
# Usage: refusals.sh BASIN_TRAIN BASIN_EVAL BASIN_EXPORT CKPT_TOOL DATA
set -u
train=$1 evaluate=$2 export=$3 tool=$4 data=$5
py=/usr/bin/python3
if ! "$py" -c 'import torch, onnx, h5py, numpy' 2>/dev/null; then
  echo "SKIP: $py lacks torch, onnx, h5py or numpy (launch/setup.sh --sanitize installs them)"; exit 77
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

train_run() { # DIR MODEL [OPTIONS...]
  local dir=$1 model=$2; shift 2
  if ! "$train" --data "$data" --model "$model" --limit-train 200 --limit-test 20 --epochs 1 --batch 20 \
        --output-dir "$dir" "$@" >"$dir.log" 2>&1; then
    echo "FAILED: basin-train --model $model:" >&2; sed 's/^/    /' "$dir.log" >&2; exit 1
  fi
}
train_run "$work/mlp" mlp
train_run "$work/bn" "conv:4:3,bn,relu,flatten,fc:10"
v2=$(ls "$work"/mlp/checkpoints/ckpt-*.h5 | tail -n 1)
bn=$(ls "$work"/bn/checkpoints/ckpt-*.h5 | tail -n 1)
mkdir -p "$work/v1" "$work/bnv1"
v1=$("$tool" v1 "$v2" "$work/v1") || { echo "FAILED: ckpt_tool v1" >&2; exit 1; }
bnv1=$("$tool" v1 "$bn" "$work/bnv1") || { echo "FAILED: ckpt_tool v1 (bn)" >&2; exit 1; }

# ---- 1. version 1: what the file says, evaluation, export, resume
"$py" - "$v1" "$v2" <<'PY' || fail "the version-1 copy is not a version-1 file of the same model"
import sys, h5py
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
ok = a.attrs["format_version"] == 1 and b.attrs["format_version"] == 2
ok = ok and "layer_table" not in a and "n_state" not in a.attrs and "layer_table" in b
ok = ok and (a["params"][:] == b["params"][:]).all() and a.attrs["model_spec"] == b.attrs["model_spec"]
sys.exit(0 if ok else 1)
PY
for f in v1 v2; do
  "$evaluate" "${!f}" --data "$data" --limit 300 --json >"$work/$f.json" 2>"$work/$f.err" ||
    { fail "basin-eval of the version-$f file:"; cat "$work/$f.err" >&2; }
  for fmt in torch onnx; do
    "$export" "${!f}" --format $fmt --output "$work/$f.$fmt" >"$work/$f.out" 2>&1 ||
      { fail "basin-export --format $fmt of the $f file:"; cat "$work/$f.out" >&2; }
  done
done
grep -q "format version 1)" "$work/v1.out" || fail "basin-export does not say it read version 1: $(cat "$work/v1.out")"
"$py" - "$work" <<'PY' || fail "version 1 and version 2 evaluate or export differently"
import json, sys, numpy as np, onnx, torch
from onnx import numpy_helper
w = sys.argv[1]
one, two = json.load(open(w + "/v1.json")), json.load(open(w + "/v2.json"))
for j in (one, two): del j["checkpoint"]
ok = one == two
if not ok: print("basin-eval:", one, two)
x = torch.from_numpy(np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32))
with torch.no_grad():
    a, b = torch.jit.load(w + "/v1.torch")(x), torch.jit.load(w + "/v2.torch")(x)
if not torch.equal(a, b): print("torchscript differs"); ok = False
ia = {t.name: numpy_helper.to_array(t) for t in onnx.load(w + "/v1.onnx").graph.initializer}
ib = {t.name: numpy_helper.to_array(t) for t in onnx.load(w + "/v2.onnx").graph.initializer}
if ia.keys() != ib.keys() or any(not np.array_equal(ia[k], ib[k]) for k in ia): print("onnx differs"); ok = False
sys.exit(0 if ok else 1)
PY
# Training resumes from the version-1 file and writes version 2.
if "$train" --data "$data" --model mlp --limit-train 200 --limit-test 20 --epochs 2 --batch 20 \
     --output-dir "$work/resumed" --resume "$v1" >"$work/resume.log" 2>&1; then
  grep -q "resumed from $v1" "$work/resume.log" || fail "the resume from version 1 does not say so"
  last=$(ls "$work"/resumed/checkpoints/ckpt-*.h5 | tail -n 1)
  "$py" -c "import h5py, sys; sys.exit(int(h5py.File('$last', 'r').attrs['format_version'] != 2))" ||
    fail "the resumed run did not write version 2"
else
  fail "basin-train --resume of a version-1 checkpoint:"; sed 's/^/    /' "$work/resume.log" >&2
fi

# ---- 2. the state buffer survives a resume: batch norm's running
# statistics (and the parameters) after 5 + 5 steps equal those after 10.
for part in straight first; do
  steps=10; [ $part = first ] && steps=5
  train_run "$work/bn-$part" "conv:4:3,bn,relu,flatten,fc:10" --schedule constant --max-steps $steps
done
if "$train" --data "$data" --model "conv:4:3,bn,relu,flatten,fc:10" --limit-train 200 --limit-test 20 --epochs 1 \
     --batch 20 --schedule constant --max-steps 10 --output-dir "$work/bn-first" --resume auto \
     >"$work/bn-resume.log" 2>&1; then
  "$py" - "$work/bn-straight/checkpoints/ckpt-0000000010.h5" "$work/bn-first/checkpoints/ckpt-0000000010.h5" <<'PY' ||
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
same = all(np.array_equal(a[k][:], b[k][:]) for k in ("params", "state"))
moved = not np.array_equal(a["state"][4:], np.ones(4, dtype=np.float32))  # running_var left its start
sys.exit(0 if same and moved and a["state"].shape == (8,) else 1)
PY
    fail "the resumed bn run's parameters or running statistics differ from the straight run's"
else
  fail "basin-train --resume of the bn model:"; sed 's/^/    /' "$work/bn-resume.log" >&2
fi

# ---- 3. refusals: exit 2, one line, nothing written
printf 'keep me\n' >"$work/existing.out"
expect_refusal() { # NAME PATTERN COMMAND...  (output: $work/existing.out)
  local name=$1 pattern=$2; shift 2
  "$@" >"$work/out" 2>"$work/err"
  local rc=$? lines
  lines=$(wc -l <"$work/err")
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q -- "$pattern" "$work/err"; then
    fail "$name: exit $rc, $lines stderr line(s), want 2 / 1 line matching '$pattern':"
    sed 's/^/    /' "$work/err" >&2
  fi
  [ -s "$work/out" ] && fail "$name: printed $(cat "$work/out")"
  [ "$(cat "$work/existing.out")" = "keep me" ] || fail "$name: the existing output was changed"
  ls -a "$work" | grep -q '\.tmp$' && { fail "$name: a temporary file was left"; rm -f "$work"/.*.tmp; }
}
# Both formats read and check the checkpoint the same way: each refusal
# is tried with one, in turn (PyTorch takes a second to load).
next_format=onnx
refuse_export() { # NAME PATTERN CHECKPOINT [OPTIONS...]
  local name=$1 pattern=$2 ckpt=$3; shift 3
  next_format=$([ $next_format = onnx ] && echo torch || echo onnx)
  expect_refusal "$name ($next_format)" "$pattern" "$export" "$ckpt" --format $next_format \
    --output "$work/existing.out" "$@"
}
copy() { cp "$v2" "$work/$1"; echo "$work/$1"; }

p=$(copy v3.h5)
"$py" -c "import h5py, numpy; h5py.File('$p', 'r+').attrs.modify('format_version', numpy.uint32(3))"
refuse_export "future format version" "format version 3, but basin-export reads versions 1 to 2" "$p"
p=$(copy flip-params.h5)
"$py" - "$p" <<'PY'
import sys, h5py
f = h5py.File(sys.argv[1], "r"); off = f["params"].id.get_offset() + 4 * 1000 + 2; f.close()
with open(sys.argv[1], "r+b") as g:
    g.seek(off); b = g.read(1); g.seek(off); g.write(bytes([b[0] ^ 0x10]))
PY
refuse_export "flipped params byte" "dataset /params fails its checksum" "$p"
p=$(copy flip-table.h5)
"$py" - "$p" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read()); i = d.index(b'"kind": "relu"'); d[i + 10] ^= 0x01
open(sys.argv[1], "wb").write(bytes(d))
PY
refuse_export "flipped layer-table byte" "header checksum mismatch" "$p"
p=$(copy truncated.h5)
truncate -s 30000 "$p"
refuse_export "truncated" "truncated" "$p"
printf 'not a checkpoint\n' >"$work/text.h5"
refuse_export "not HDF5" "not an HDF5 file" "$work/text.h5"
refuse_export "missing" "no such file" "$work/nowhere.h5"
refuse_export "a data file" "not a basin checkpoint" "$data"

# Tables basin-export cannot build (checksums made anew by ckpt_tool).
retable() { # NAME PYTHON-EDIT: the mlp table edited, as a checkpoint
  "$py" - "$v2" "$work/$1.json" "$2" <<'PY'
import sys, h5py, json
t = json.loads(bytes(h5py.File(sys.argv[1], "r")["layer_table"][()]).decode())
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(t))
PY
  mkdir -p "$work/$1"
  "$tool" table "$v2" "$work/$1" "$work/$1.json"
}
p=$(retable unknown 't["layers"][1]["kind"] = "lstm"')
refuse_export "unknown layer kind" "layer 1 (lstm): basin-export knows no layer of this kind" "$p"
p=$(retable overlap 't["layers"][5]["params"][1]["offset"] -= 1')
refuse_export "overlapping offsets" "do not cover /params exactly: overlap" "$p"
p=$(retable gap 't["layers"][5]["params"][1]["offset"] += 1')
refuse_export "a gap in the offsets" "do not cover /params exactly: gap" "$p"
p=$(retable pad 'L = t["layers"][0]; L.update(kind="pool", kernel=2, stride=1, padding=2, out_shape=[1, 31, 31])
t["layers"][1]["in_shape"] = [1, 31, 31]')
refuse_export "pool padding past half the window" "layer 0 (pool): padding 2 is more than half its window 2" "$p"

# Batch norm without running statistics (version 1).
refuse_export "bn in version 1" "layer 1 (bn): a version-1 checkpoint has no layer table" "$bnv1"
expect_refusal "basin-eval of bn in version 1" "holds none" "$evaluate" "$bnv1" --data "$data" --limit 20
"$evaluate" "$bn" --data "$data" --limit 20 >/dev/null 2>&1 || fail "basin-eval of the version-2 bn model failed"

# Options and outputs.
expect_refusal "unknown format" "--format 'tf': expected torch or onnx" \
  "$export" "$v2" --format tf --output "$work/existing.out"
expect_refusal "no format" "--format missing" "$export" "$v2" --output "$work/existing.out"
expect_refusal "no output" "--output FILE is missing" "$export" "$v2" --format onnx
expect_refusal "no checkpoint" "no checkpoint given" "$export" --format onnx --output "$work/existing.out"
expect_refusal "unknown option" "unknown option '--bogus'" "$export" "$v2" --bogus
expect_refusal "two checkpoints" "unexpected argument" "$export" "$v2" "$v2" --format onnx --output "$work/x"
refuse_export "folder missing" "cannot write in $work/no/such" "$v2" --output "$work/no/such/model"
refuse_export "output is a folder" "is a folder" "$v2" --output "$work/v1"
if [ "$(id -u)" != 0 ]; then # root writes anywhere
  mkdir "$work/ro" && chmod 555 "$work/ro"
  refuse_export "read-only folder" "cannot write in" "$v2" --output "$work/ro/model"
fi
[ -e "$work/x" ] && fail "a refused export wrote its output"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "version 1 and refusals: all checks passed"
