"""Checks of an exported basin model against basin-eval, written without
basin-export's code (only the Python API's module is compared with the
TorchScript file at the end):

  check_export.py CKPT DATA MODEL.pt MODEL.onnx EVAL.json EVAL_WALK.json WALK_N [LAUNCH_DIR]

- the layer table (/layer_table) covers /params and /state exactly, each
  tensor's count is its shape's product, and the table's shapes chain;
- the TorchScript file, run by PyTorch on the first EVAL.json "samples"
  test images, gives basin-eval's loss to relative 1e-5 and its number of
  correct predictions exactly; batch norm's running statistics are in it;
- the ONNX file passes onnx.checker (full check) at opset 13, has one node
  L<i>_<kind> per layer of the table, and shape inference gives each one
  the table's output shape;
- a NumPy walk over the ONNX nodes (float64), on the first WALK_N images,
  gives EVAL_WALK.json's loss to relative 1e-5 and its correct count, and
  PyTorch's logits to 1e-5.
Exit 1 naming each failed check."""
import json
import re
import sys

import h5py
import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

ckpt_path, data_path, pt_path, onnx_path, eval_path, walk_eval_path, walk_n = sys.argv[1:8]
launch_dir = sys.argv[8] if len(sys.argv) > 8 else None
walk_n = int(walk_n)
torch.set_num_threads(1)
failures = []


def fail(*msg):
    failures.append(" ".join(str(m) for m in msg))
    print("FAILED:", *msg)


# ---- the layer table ------------------------------------------------------------
with h5py.File(ckpt_path, "r") as f:
    table = json.loads(bytes(f["layer_table"][()]).split(b"\0")[0].decode())
    n_params = int(f.attrs["n_params"])
    n_state = int(f.attrs["n_state"])
    has_state = "state" in f
layers = table["layers"]
if table["n_params"] != n_params or table["n_state"] != n_state:
    fail("table n_params/n_state", table["n_params"], table["n_state"], "file", n_params, n_state)
if has_state != (n_state > 0):
    fail("/state present:", has_state, "n_state", n_state)
for key, n in (("params", n_params), ("state", n_state)):
    spans = sorted((t["offset"], t["count"], L["index"], t["name"]) for L in layers for t in L[key])
    at = 0
    for off, count, idx, name in spans:
        if off != at:
            fail(key, "layer", idx, name, "at", off, "expected", at, "(gap or overlap)")
        at = off + count
    if at != n:
        fail(key, "tensors end at", at, "buffer holds", n)
    for L in layers:
        for t in L[key]:
            if int(np.prod(t["shape"])) != t["count"]:
                fail("layer", L["index"], t["name"], "shape", t["shape"], "count", t["count"])
outs = {-1: table["input_shape"]}
for i, L in enumerate(layers):
    if L["index"] != i or L["in_shape"] != outs[L["inputs"][0]]:
        fail("layer", i, "in_shape", L["in_shape"], "input's output", outs[L["inputs"][0]])
    if L["kind"] == "add" and outs[L["inputs"][1]] != L["in_shape"]:
        fail("layer", i, "add of different shapes")
    if L["kind"] == "bn" and [t["name"] for t in L["params"] + L["state"]] != \
            ["weight", "bias", "running_mean", "running_var"]:
        fail("layer", i, "bn tensors", L["params"], L["state"])
    outs[i] = L["out_shape"]

# ---- the test images, normalised as basin's reader does -------------------------
ev = json.load(open(eval_path))
wev = json.load(open(walk_eval_path))
n = ev["samples"]
with h5py.File(data_path, "r") as f:
    images = f["test/images"][:n]
    labels = f["test/labels"][:n].astype(np.int64)
    C = images.shape[1]
    mean = np.broadcast_to(np.asarray(f.attrs["mean"], dtype=np.float32).reshape(-1), (C,)).reshape(1, C, 1, 1)
    std = np.broadcast_to(np.asarray(f.attrs["std"], dtype=np.float32).reshape(-1), (C,)).reshape(1, C, 1, 1)
x = (images.astype(np.float32) / np.float32(255) - mean) / std
x = x.astype(np.float32)


def loss_and_correct(logits, y):
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(len(y)), y]))
    # basin counts the first arg-max of the float logits
    return loss, int((np.argmax(logits, axis=1) == y).sum())


# ---- PyTorch on the TorchScript file ----------------------------------------------
net = torch.jit.load(pt_path)
net.eval()
with torch.no_grad():
    logits_t = torch.cat([net(torch.from_numpy(x[i:i + 250])) for i in range(0, n, 250)]).numpy()
if logits_t.shape != (n, len(ev["per_class"])):
    fail("torch logits shape", logits_t.shape)
loss_t, correct_t = loss_and_correct(logits_t, labels)
rel = abs(loss_t - ev["loss"]) / abs(ev["loss"])
print("torch: loss %.9g (basin-eval %.9g, relative %.2e), correct %d (basin-eval %d)"
      % (loss_t, ev["loss"], rel, correct_t, ev["correct"]))
if not rel <= 1e-5:
    fail("torch loss", loss_t, "basin-eval", ev["loss"], "relative", rel)
if correct_t != ev["correct"]:
    gaps = np.sort(logits_t, axis=1)
    fail("torch correct", correct_t, "basin-eval", ev["correct"], "smallest top-2 gap",
         float((gaps[:, -1] - gaps[:, -2]).min()))
state = net.state_dict()
for L in layers:
    if L["kind"] == "bn":
        rv = state["layers.%d.running_var" % L["index"]].numpy()
        if not np.isfinite(rv).all() or np.allclose(rv, 1.0):
            fail("layer", L["index"], "running_var is its initial value: the state did not arrive")

# ---- ONNX: checker, layer count, shapes ------------------------------------------------
model = onnx.load(onnx_path)
try:
    onnx.checker.check_model(model, full_check=True)
except onnx.checker.ValidationError as e:
    fail("onnx.checker:", str(e).split("\n")[0])
if [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] != [13]:
    fail("opset", [(o.domain, o.version) for o in model.opset_import])
inferred = shape_inference.infer_shapes(model, strict_mode=True)
vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
layer_nodes = [nd for nd in model.graph.node if re.fullmatch(r"L\d+_[a-z]+", nd.name)]
if len(layer_nodes) != len(layers):
    fail("onnx has", len(layer_nodes), "layer nodes, the table", len(layers), "layers")
for nd in layer_nodes:
    i, kind = nd.name[1:].split("_", 1)
    L = layers[int(i)]
    if kind != L["kind"]:
        fail("node", nd.name, "is layer", i, "of kind", L["kind"])
    v = vi.get(nd.output[0])
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim] if v \
        else None
    c_, h_, w_ = L["out_shape"]
    if dims not in (["N", c_, h_, w_], ["N", c_] if h_ == w_ == 1 else None):
        fail("node", nd.name, "output shape", dims, "table", L["out_shape"])


# ---- a NumPy walk over the ONNX nodes ------------------------------------------------------
def windows(a, k, s, pad, value):
    a = np.pad(a, ((0, 0), (0, 0), (pad[0], pad[2]), (pad[1], pad[3])), constant_values=value)
    w = np.lib.stride_tricks.sliding_window_view(a, (k[0], k[1]), axis=(2, 3))
    return w[:, :, ::s[0], ::s[1]]  # (N, C, OH, OW, kh, kw)


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def walk(graph, x):
    env = {t.name: numpy_helper.to_array(t).astype(np.float64 if t.data_type == 1 else np.int64)
           for t in graph.initializer}
    env[graph.input[0].name] = x.astype(np.float64)
    for nd in graph.node:
        a = attrs(nd)
        i = [env[name] for name in nd.input if name]
        op = nd.op_type
        if op == "Conv":
            k, s, p = a["kernel_shape"], a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
            w = windows(i[0], k, s, p, 0.0)
            y = np.einsum("nchwij,ocij->nohw", w, i[1], optimize=True)
            if len(i) > 2:
                y = y + i[2].reshape(1, -1, 1, 1)
        elif op == "MaxPool":
            y = windows(i[0], a["kernel_shape"], a["strides"], a.get("pads", [0, 0, 0, 0]), -np.inf).max(axis=(4, 5))
        elif op == "AveragePool":
            assert a.get("count_include_pad") == 1
            k = a["kernel_shape"]
            y = windows(i[0], k, a["strides"], a.get("pads", [0, 0, 0, 0]), 0.0).sum(axis=(4, 5)) / (k[0] * k[1])
        elif op == "GlobalAveragePool":
            y = i[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Gemm":
            A = i[0].T if a.get("transA", 0) else i[0]
            B = i[1].T if a.get("transB", 0) else i[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(i) > 2:
                y = y + a.get("beta", 1.0) * i[2]
        elif op == "BatchNormalization":
            shape = (1, -1) + (1,) * (i[0].ndim - 2)
            sc, b, m, v = (t.reshape(shape) for t in i[1:5])
            y = (i[0] - m) / np.sqrt(v + np.float64(np.float32(a.get("epsilon", 1e-5)))) * sc + b
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "Flatten":
            ax = a.get("axis", 1)
            y = i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)
        elif op == "Identity":
            y = i[0]
        elif op == "Add":
            y = i[0] + i[1]
        elif op == "Unsqueeze":
            y = i[0]
            for ax in sorted(int(d) for d in i[1]):
                y = np.expand_dims(y, ax)
        else:
            raise SystemExit("FAILED: the walk knows no %s (node %s)" % (op, nd.name))
        env[nd.output[0]] = y
    return env[graph.output[0].name]


xw = x[:walk_n]
logits_w = np.concatenate([walk(model.graph, xw[i:i + 50]) for i in range(0, walk_n, 50)])
loss_w, correct_w = loss_and_correct(logits_w, labels[:walk_n])
rel = abs(loss_w - wev["loss"]) / abs(wev["loss"])
scale = max(1.0, float(np.abs(logits_w).max()))
diff = float(np.abs(logits_w - logits_t[:walk_n]).max()) / scale
print("onnx walk: %d images, loss %.9g (basin-eval %.9g, relative %.2e), correct %d (basin-eval %d), logits "
      "within %.2e of PyTorch's" % (walk_n, loss_w, wev["loss"], rel, correct_w, wev["correct"], diff))
if wev["samples"] != walk_n:
    fail("basin-eval of the walk covers", wev["samples"], "samples, not", walk_n)
if not rel <= 1e-5:
    fail("onnx walk loss", loss_w, "basin-eval", wev["loss"], "relative", rel)
if correct_w != wev["correct"]:
    fail("onnx walk correct", correct_w, "basin-eval", wev["correct"])
if not diff <= 1e-5:
    fail("onnx walk logits differ from PyTorch's by", diff, "(relative to the largest logit)")

# ---- the Python API gives the TorchScript file's numbers -------------------------------------
if launch_dir:
    sys.path.insert(0, launch_dir)
    import basin_export
    api = basin_export.to_torch(basin_export.load_checkpoint(ckpt_path))
    with torch.no_grad():  # the same batch: the same kernels, the same bits
        logits_a = api(torch.from_numpy(x[:100])).numpy()
        logits_j = net(torch.from_numpy(x[:100])).numpy()
    if not np.array_equal(logits_a, logits_j):
        fail("the Python API's module differs from the TorchScript file by", float(np.abs(logits_a - logits_j).max()))

if failures:
    print("%d check(s) failed" % len(failures))
    sys.exit(1)
print("all checks passed")
