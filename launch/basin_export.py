#!/usr/bin/python3
"""basin checkpoints outside basin: a PyTorch module, a TorchScript file, an ONNX model.

As a command (launch/basin-export runs it with Debian's /usr/bin/python3):

    basin-export CHECKPOINT --format torch|onnx --output FILE

As a module (python3-h5py and python3-numpy; python3-torch for the PyTorch
module, python3-onnx for ONNX):

    import basin_export
    ckpt = basin_export.load_checkpoint("out/checkpoints/ckpt-0000001200.h5")
    net = basin_export.to_torch(ckpt)      # a torch.nn.Module, in eval mode
    logits = net(images)                   # (N, C, H, W) float32 -> (N, classes)
    proto = basin_export.to_onnx(ckpt)     # an onnx.ModelProto, opset 13

The network takes what basin's data reader hands the trainer: float32
images normalised as (x / 255 - mean[c]) / std[c], with mean and std the
data file's attributes of those names (one number, or one per channel); it
returns the logits (softmax cross-entropy is the loss basin trains).

The checkpoint is verified as checkpoints/FORMAT.md says (format, version,
types and shapes, the XXH64 checksums of every buffer and of the header)
before anything is built. A version-2 checkpoint describes its network in
its layer table; a version-1 checkpoint has none, and its model spec is
parsed instead (the layer kinds version 1 could hold: fc, conv, pool, relu,
flatten, dropout).

--format torch writes TorchScript (torch.jit.script of the module): a file
that torch.jit.load runs with no Python class and none of this code, in
Python or C++ (libtorch). --format onnx writes an ONNX model of opset 13,
one graph node per basin layer (named L<index>_<kind>), checked by
onnx.checker and onnx.shape_inference before it is written.

Exit status: 0 written; 1 a failure of this machine (a missing Python
package, an I/O error); 2 bad input (an option, a checkpoint of another
format version, a damaged checkpoint, a layer the format cannot express, an
output that cannot be written): one line on stderr, and no file written.
"""

import ctypes
import json
import os
import signal
import struct
import sys
import tempfile

import numpy as np

ONNX_OPSET = 13
FORMAT_MAGIC = "basin-checkpoint"
READ_VERSIONS = (1, 2)
TABLE_VERSION = 1
MAX_STRING = 60001
MAX_TABLE = (16 << 20) + 1

# The numeric root attributes, in the order of the header checksum
# (FORMAT.md): name, struct code, HDF5 class ("u", "i", "f") and size.
FIELDS = [
    ("config_hash", "Q"), ("seed", "Q"), ("global_batch", "Q"), ("world_size", "I"),
    ("train_samples", "Q"), ("in_c", "i"), ("in_h", "i"), ("in_w", "i"), ("classes", "i"),
    ("next_step", "Q"), ("epoch", "Q"), ("step_in_epoch", "Q"), ("samples_seen", "Q"),
    ("elapsed_s", "d"),
]

# Layer kinds and the hyper-parameters the table gives each (FORMAT.md).
KIND_KEYS = {
    "fc": ("units", "bias"),
    "conv": ("units", "kernel", "stride", "padding", "bias"),
    "pool": ("kernel", "stride", "padding"),
    "avgpool": ("kernel", "stride", "padding", "count_include_pad"),
    "gap": (),
    "relu": (),
    "flatten": (),
    "dropout": ("p",),
    "bn": ("momentum", "eps"),
    "add": (),
}
V1_KINDS = ("fc", "conv", "pool", "relu", "flatten", "dropout")
V1_PRESETS = {
    "mlp": "flatten,fc:1024,relu,fc:1024,relu,fc:10",
    "cnn": "conv:32:5,relu,pool:2,conv:64:5,relu,pool:2,flatten,fc:1024,relu,dropout:0.5,fc:10",
    "cnn-small": "conv:16:5,relu,pool:2,conv:32:5,relu,pool:2,flatten,fc:256,relu,fc:10",
}


class BadInput(Exception):
    """The checkpoint, an option or the output is wrong (exit 2)."""


class Failure(Exception):
    """Something of this machine failed (exit 1)."""


# ---- XXH64 (seed 0), as FORMAT.md specifies ---------------------------------

_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                           0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
_M = (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def xxh64_python(data):
    """XXH64 with seed 0, written from the xxHash specification (slow: the
    fallback when Debian's libxxhash cannot be loaded)."""
    data = memoryview(data).cast("B")
    n = len(data)
    pos = 0
    if n >= 32:
        v = [(_P1 + _P2) & _M, _P2, 0, (-_P1) & _M]
        stripes = n // 32
        lanes = np.frombuffer(data[:stripes * 32], dtype="<u8").reshape(stripes, 4).tolist()
        v1, v2, v3, v4 = v
        for a, b, c, d in lanes:
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
        acc = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        for x in (v1, v2, v3, v4):
            acc = ((acc ^ _round(0, x)) * _P1 + _P4) & _M
        pos = stripes * 32
    else:
        acc = _P5
    acc = (acc + n) & _M
    while pos + 8 <= n:
        k = struct.unpack_from("<Q", data, pos)[0]
        acc = (_rotl(acc ^ _round(0, k), 27) * _P1 + _P4) & _M
        pos += 8
    if pos + 4 <= n:
        k = struct.unpack_from("<I", data, pos)[0]
        acc = (_rotl(acc ^ ((k * _P1) & _M), 23) * _P2 + _P3) & _M
        pos += 4
    while pos < n:
        acc = (_rotl(acc ^ ((data[pos] * _P5) & _M), 11) * _P1) & _M
        pos += 1
    acc ^= acc >> 33
    acc = (acc * _P2) & _M
    acc ^= acc >> 29
    acc = (acc * _P3) & _M
    acc ^= acc >> 32
    return acc


def _load_libxxhash():
    try:
        lib = ctypes.CDLL("libxxhash.so.0")
        fn = lib.XXH64
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]
    return fn


_XXH64_C = _load_libxxhash()


def xxh64(data):
    """XXH64 with seed 0 of bytes or a contiguous array: Debian's libxxhash
    (the library basin's C code uses) when it loads, else xxh64_python."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
        if _XXH64_C is not None:
            return int(_XXH64_C(data.ctypes.data, data.nbytes, 0))
        return xxh64_python(data.tobytes())
    data = bytes(data)
    if _XXH64_C is not None:
        return int(_XXH64_C(data, len(data), 0))
    return xxh64_python(data)


# ---- reading a checkpoint ---------------------------------------------------

class Checkpoint:
    """A verified checkpoint: format_version, the root fields (fields:
    name -> value), model_spec, config_text, params and state (float32
    arrays; state empty when there is none), layer_table (the parsed JSON of
    version 2, None for version 1 or an empty table), layers (the network,
    one dict per layer, from the table or the model spec) and path."""


def _attr(h5py, obj, name, kind, size):
    """A scalar attribute whose HDF5 type is exactly the little-endian kind
    ("u", "i", "f") of size bytes."""
    if not h5py.h5a.exists(obj.id, name.encode()):
        raise BadInput("attribute '%s' is missing" % name)
    aid = h5py.h5a.open(obj.id, name.encode())
    t = aid.get_type()
    want = {"u": "uint", "i": "int", "f": "float"}[kind] + "%d little-endian" % (8 * size)
    ok = aid.get_space().get_simple_extent_type() == h5py.h5s.SCALAR and t.get_size() == size
    if kind == "f":
        ok = ok and isinstance(t, h5py.h5t.TypeFloatID) and t.get_order() == h5py.h5t.ORDER_LE
    else:
        sign = h5py.h5t.SGN_2 if kind == "i" else h5py.h5t.SGN_NONE
        ok = ok and isinstance(t, h5py.h5t.TypeIntegerID) and t.get_order() == h5py.h5t.ORDER_LE \
            and t.get_sign() == sign
    if not ok:
        raise BadInput("attribute '%s' has the wrong type (expected %s)" % (name, want))
    out = np.zeros((), dtype=np.dtype({"u": "<u%d", "i": "<i%d", "f": "<f%d"}[kind] % size))
    aid.read(out)
    return out[()].item()


def _string_attr(h5py, obj, name):
    """A fixed-length string attribute, UTF-8 text without its terminator."""
    if not h5py.h5a.exists(obj.id, name.encode()):
        raise BadInput("attribute '%s' is missing" % name)
    aid = h5py.h5a.open(obj.id, name.encode())
    t = aid.get_type()
    if aid.get_space().get_simple_extent_type() != h5py.h5s.SCALAR or not isinstance(t, h5py.h5t.TypeStringID) \
            or t.is_variable_str() or not 0 < t.get_size() <= MAX_STRING:
        raise BadInput("attribute '%s' has the wrong type (expected a fixed-length string)" % name)
    raw = obj.attrs[name]
    raw = raw if isinstance(raw, bytes) else bytes(raw)
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("attribute '%s' is not UTF-8 text" % name)


def _buffer(h5py, f, name, n, count_name):
    """/name: float32 little-endian, shape (n), with its xxh64 attribute;
    returns (stored checksum, dataset)."""
    if name not in f:
        raise BadInput("dataset /%s is missing" % name)
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise BadInput("/%s is not a dataset" % name)
    t = ds.id.get_type()
    if not (isinstance(t, h5py.h5t.TypeFloatID) and t.get_size() == 4 and t.get_order() == h5py.h5t.ORDER_LE):
        raise BadInput("dataset /%s has the wrong type (expected float32 little-endian)" % name)
    if ds.shape != (n,):
        raise BadInput("dataset /%s has the wrong shape (expected (%d), as %s says)" % (name, n, count_name))
    try:
        stored = _attr(h5py, ds, "xxh64", "u", 8)
    except BadInput as e:
        raise BadInput("dataset /%s: %s" % (name, e))
    return stored, ds


def _read_table(h5py, f):
    if "layer_table" not in f:
        raise BadInput("dataset /layer_table is missing")
    ds = f["layer_table"]
    t = ds.id.get_type() if isinstance(ds, h5py.Dataset) else None
    if t is None or ds.shape != () or not isinstance(t, h5py.h5t.TypeStringID) or t.is_variable_str() \
            or not 0 < t.get_size() <= MAX_TABLE:
        raise BadInput("dataset /layer_table has the wrong type (expected a scalar fixed-length string)")
    raw = ds[()]
    raw = raw if isinstance(raw, bytes) else bytes(raw)
    return raw.split(b"\0", 1)[0]


def _read_verified(path):
    """Everything of the file at path, verified (FORMAT.md, "Reading and
    verification order"); BadInput naming the first problem. HDF5's own
    errors on a damaged file are bad input too."""
    import h5py
    try:
        return _read_file(h5py, path)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise BadInput("damaged HDF5 file (%s)" % (str(e).split("\n")[0] or type(e).__name__))


def _read_file(h5py, path):
    if not os.path.exists(path):
        raise BadInput("no such file")
    if not os.path.isfile(path):
        raise BadInput("not a regular file")
    if os.path.getsize(path) == 0 or not h5py.is_hdf5(path):
        raise BadInput("not an HDF5 file%s" % (" (it is empty)" if os.path.getsize(path) == 0 else ""))
    try:
        f = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as e:
        raise BadInput("damaged or truncated HDF5 file (%s)" % str(e).split("\n")[0])
    with f:
        try:
            magic = _string_attr(h5py, f, "format")
        except BadInput:
            raise BadInput("not a basin checkpoint (no valid 'format' attribute)")
        if magic != FORMAT_MAGIC:
            raise BadInput("not a basin checkpoint ('format' attribute is not \"%s\")" % FORMAT_MAGIC)
        version = _attr(h5py, f, "format_version", "u", 4)
        if version not in READ_VERSIONS:
            raise BadInput("format version %d, but basin-export reads versions %d to %d%s"
                           % (version, READ_VERSIONS[0], READ_VERSIONS[-1],
                              " (written by a newer basin)" if version > READ_VERSIONS[-1] else ""))
        c = Checkpoint()
        c.path = path
        c.format_version = version
        c.fields = {}
        for name, code in FIELDS:
            kind = "f" if code == "d" else "i" if code == "i" else "u"
            c.fields[name] = _attr(h5py, f, name, kind, struct.calcsize("<" + code))
        n = _attr(h5py, f, "n_params", "u", 8)
        n_state = _attr(h5py, f, "n_state", "u", 8) if version >= 2 else 0
        header = _attr(h5py, f, "header_xxh64", "u", 8)
        c.model_spec = _string_attr(h5py, f, "model_spec")
        c.config_text = _string_attr(h5py, f, "config_text")
        if n == 0 or n > (1 << 60):
            raise BadInput("implausible n_params %d" % n)
        if n_state > (1 << 60):
            raise BadInput("implausible n_state %d" % n_state)
        sums = {"state": xxh64(b"")}
        sets = {}
        for name, count, count_name in (("params", n, "n_params"), ("momentum", n, "n_params"),
                                        ("state", n_state, "n_state")):
            if name == "state" and (version < 2 or n_state == 0):
                continue
            sums[name], sets[name] = _buffer(h5py, f, name, count, count_name)
        table = _read_table(h5py, f) if version >= 2 else b""
        spec, conf = c.model_spec.encode(), c.config_text.encode()
        blob = struct.pack("<I", version)
        blob += b"".join(struct.pack("<" + code, c.fields[name]) for name, code in FIELDS)
        blob += struct.pack("<QQQ", n, sums["params"], sums["momentum"])
        if version >= 2:
            blob += struct.pack("<QQ", n_state, sums["state"])
        blob += struct.pack("<Q", len(spec)) + spec + struct.pack("<Q", len(conf)) + conf
        if version >= 2:
            blob += struct.pack("<Q", len(table)) + table
        want = xxh64(blob)
        if want != header:
            raise BadInput("header checksum mismatch (stored xxh64 %016x, computed %016x): a field, string or the "
                           "layer table is corrupt" % (header, want))
        arrays = {}
        for name, ds in sets.items():
            try:
                data = np.empty(ds.shape, dtype="<f4")
                ds.read_direct(data)
            except OSError as e:
                raise BadInput("cannot read dataset /%s (%s)" % (name, str(e).split("\n")[0]))
            got = xxh64(data)
            if got != sums[name]:
                raise BadInput("dataset /%s fails its checksum (stored xxh64 %016x, computed %016x): the data is "
                               "corrupt" % (name, sums[name], got))
            arrays[name] = data
        c.params = arrays["params"]
        c.momentum = arrays["momentum"]
        c.state = arrays.get("state", np.zeros(0, dtype="<f4"))
        try:
            c.layer_table = json.loads(table.decode("utf-8")) if table else None
        except (UnicodeDecodeError, ValueError) as e:
            raise BadInput("the layer table is not JSON text (%s)" % e)
        return c


def _guarded(path):
    """libhdf5 may crash on a damaged file: a child process reads and
    verifies it first, and a crash refuses the file like other damage."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            signal.alarm(60 + (os.path.getsize(path) >> 26) if os.path.isfile(path) else 60)
            _read_verified(path)
        except BadInput:
            code = 10
        except BaseException:
            code = 11
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGALRM:
            raise BadInput("damaged HDF5 file: the HDF5 library did not finish reading it")
        raise BadInput("damaged HDF5 file: the HDF5 library crashed reading it (signal %d)" % sig)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) not in (0, 10, 11):
        raise BadInput("damaged HDF5 file: reading it failed (status %d)" % status)


def load_checkpoint(path):
    """Read and verify the checkpoint at path, and describe its network
    (Checkpoint.layers). BadInput (a one-line reason) for a bad file."""
    try:
        _guarded(path)
        c = _read_verified(path)
        c.layers = _network(c)
    except BadInput as e:
        raise BadInput("checkpoint %s: %s" % (path, e))
    return c


# ---- the network: from the layer table, or from a version-1 model spec ------

def _spec_layers(spec, in_shape):
    """The layers of a version-1 model spec (src/models/models.c's grammar
    for fc, conv, pool, relu, flatten, dropout), with shapes and the offsets
    of the flat buffer: the last layer's tensors first, weight before bias."""
    spec = V1_PRESETS.get(spec, spec)
    layers = []
    shape = list(in_shape)
    for i, tok in enumerate(spec.split(",")):
        f = tok.split(":")
        kind = f[0]
        where = "layer %d (%s)" % (i, tok)
        if kind not in V1_KINDS:
            raise BadInput("%s: a version-1 checkpoint has no layer table, and its model spec can only hold %s"
                           % (where, ", ".join(V1_KINDS)))

        def num(s, lo=1):
            try:
                v = int(s)
            except ValueError:
                raise BadInput("%s: '%s' is not an integer" % (where, s))
            if v < lo:
                raise BadInput("%s: %d is out of range" % (where, v))
            return v
        L = {"index": i, "kind": kind, "inputs": [i - 1], "in_shape": list(shape), "params": [], "state": []}
        if kind == "fc":
            if len(f) != 2:
                raise BadInput("%s: expected fc:N" % where)
            L.update(units=num(f[1]), bias=True)
            out = [L["units"], 1, 1]
        elif kind == "conv":
            if not 3 <= len(f) <= 5:
                raise BadInput("%s: expected conv:C:K[:S[:P]]" % where)
            k = num(f[2])
            L.update(units=num(f[1]), kernel=k, stride=num(f[3]) if len(f) > 3 else 1,
                     padding=num(f[4], 0) if len(f) > 4 else (k - 1) // 2, bias=True)
            oh = (shape[1] + 2 * L["padding"] - k) // L["stride"] + 1
            ow = (shape[2] + 2 * L["padding"] - k) // L["stride"] + 1
            out = [L["units"], oh, ow]
        elif kind == "pool":
            if not 2 <= len(f) <= 3:
                raise BadInput("%s: expected pool:K[:S]" % where)
            k = num(f[1])
            L.update(kernel=k, stride=num(f[2]) if len(f) > 2 else k, padding=0)
            out = [shape[0], (shape[1] - k) // L["stride"] + 1, (shape[2] - k) // L["stride"] + 1]
        elif kind == "dropout":
            try:
                L["p"] = float(np.float32(float(f[1]))) if len(f) == 2 else None
            except ValueError:
                L["p"] = None
            if L["p"] is None or not 0 <= L["p"] < 1:
                raise BadInput("%s: expected dropout:P with P in [0, 1)" % where)
            out = list(shape)
        elif kind == "flatten":
            out = [shape[0] * shape[1] * shape[2], 1, 1]
        else:
            out = list(shape)
        if kind in ("fc", "conv", "pool", "dropout", "flatten", "relu") and min(out) < 1:
            raise BadInput("%s: does not fit its input %s" % (where, "x".join(map(str, shape))))
        if len(f) > 1 and kind in ("relu", "flatten"):
            raise BadInput("%s: takes no arguments" % where)
        L["out_shape"] = out
        layers.append(L)
        shape = out
    off = 0
    for L in reversed(layers):
        if L["kind"] == "fc":
            ins = L["in_shape"][0] * L["in_shape"][1] * L["in_shape"][2]
            tensors = [("weight", [L["units"], ins]), ("bias", [L["units"]])]
        elif L["kind"] == "conv":
            tensors = [("weight", [L["units"], L["in_shape"][0], L["kernel"], L["kernel"]]), ("bias", [L["units"]])]
        else:
            continue
        for name, shp in tensors:
            count = int(np.prod(shp))
            L["params"].append({"name": name, "shape": shp, "offset": off, "count": count})
            off += count
    return layers


def _check_cover(layers, key, n, what):
    """The tensors of every layer under key cover [0, n) exactly: no gap, no
    overlap, nothing outside."""
    spans = sorted((t["offset"], t["count"], L["index"], t["name"]) for L in layers for t in L[key])
    at = 0
    for off, count, index, name in spans:
        if off != at:
            raise BadInput("the layer table's tensors do not cover /%s exactly: %s at %d (layer %d %s), expected "
                           "one at %d" % (what, "overlap" if off < at else "gap", off, index, name, at))
        at = off + count
    if at != n:
        raise BadInput("the layer table's tensors cover %d values of /%s, which holds %d" % (at, what, n))


def _is_int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _check_layers(c, layers):
    """Everything the builders rely on, checked: kinds known, keys present,
    shapes consistent, tensors inside the buffers with the sizes their shapes
    give, covering them exactly."""
    in_shape = [c.fields["in_c"], c.fields["in_h"], c.fields["in_w"]]
    outs = {-1: in_shape}
    if not layers:
        raise BadInput("the network has no layers")
    for i, L in enumerate(layers):
        if not isinstance(L, dict) or L.get("index") != i or not isinstance(L.get("kind"), str):
            raise BadInput("layer table entry %d is malformed (no index %d or kind)" % (i, i))
        kind = L["kind"]
        where = "layer %d (%s)" % (i, kind)
        if kind not in KIND_KEYS:
            raise BadInput("%s: basin-export knows no layer of this kind (%s)" % (where, ", ".join(KIND_KEYS)))
        for key in KIND_KEYS[kind] + ("inputs", "in_shape", "out_shape", "params", "state"):
            if key not in L:
                raise BadInput("%s: the layer table gives no '%s'" % (where, key))
        ins = L["inputs"]
        if not isinstance(ins, list) or len(ins) != (2 if kind == "add" else 1) \
                or not all(_is_int(s, -1) and s < i for s in ins):
            raise BadInput("%s: bad inputs %r" % (where, ins))
        for key in ("in_shape", "out_shape"):
            s = L[key]
            if not isinstance(s, list) or len(s) != 3 or not all(_is_int(v, 1) for v in s):
                raise BadInput("%s: bad %s %r" % (where, key, s))
        if L["in_shape"] != outs[ins[0]] or (kind == "add" and outs[ins[1]] != L["in_shape"]):
            raise BadInput("%s: its input shape %r is not its input's output shape" % (where, L["in_shape"]))
        for key in KIND_KEYS[kind]:
            v = L[key]
            if key in ("bias", "count_include_pad"):
                ok = isinstance(v, bool) and (key == "bias" or v)
            elif key in ("p", "momentum", "eps"):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < (1 if key == "p" else 2)
            else:
                ok = _is_int(v, 0 if key == "padding" else 1)
            if not ok:
                raise BadInput("%s: bad %s %r" % (where, key, v))
        C, H, W = L["in_shape"]
        out = list(L["in_shape"])
        want_params, want_state = [], []
        if kind == "fc":
            out = [L["units"], 1, 1]
            want_params = [("weight", [L["units"], C * H * W])] + ([("bias", [L["units"]])] if L["bias"] else [])
        elif kind in ("conv", "pool", "avgpool"):
            k, s, p = L["kernel"], L["stride"], L["padding"]
            oh, ow = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
            out = [L["units"] if kind == "conv" else C, oh, ow]
            if kind == "conv":
                want_params = [("weight", [L["units"], C, k, k])] + ([("bias", [L["units"]])] if L["bias"] else [])
            elif 2 * p > k:
                raise BadInput("%s: padding %d is more than half its window %d: PyTorch and ONNX pooling cannot "
                               "express it" % (where, p, k))
        elif kind == "gap":
            out = [C, 1, 1]
        elif kind == "flatten":
            out = [C * H * W, 1, 1]
        elif kind == "bn":
            want_params = [("weight", [C]), ("bias", [C])]
            want_state = [("running_mean", [C]), ("running_var", [C])]
        if out != L["out_shape"] or min(out) < 1:
            raise BadInput("%s: output shape %r, but its input %r and hyper-parameters give %r"
                           % (where, L["out_shape"], L["in_shape"], out))
        for key, want, n in (("params", want_params, c.params.size), ("state", want_state, c.state.size)):
            got = L[key]
            if not isinstance(got, list) or len(got) != len(want):
                raise BadInput("%s: expected %s tensors %s" % (where, key, [w[0] for w in want]))
            for t, (name, shape) in zip(got, want):
                if not isinstance(t, dict) or t.get("name") != name or t.get("shape") != shape \
                        or not _is_int(t.get("offset")) or t.get("count") != int(np.prod(shape)) \
                        or t["offset"] + t["count"] > n:
                    raise BadInput("%s: tensor %r is not %s of shape %r inside /%s" % (where, t, name, shape, key))
        outs[i] = out
    if layers[-1]["kind"] != "fc" or layers[-1]["out_shape"] != [c.fields["classes"], 1, 1]:
        raise BadInput("the last layer is not fc:%d (the classes)" % c.fields["classes"])
    _check_cover(layers, "params", c.params.size, "params")
    _check_cover(layers, "state", c.state.size, "state")


def _network(c):
    t = c.layer_table
    if t is not None:
        if not isinstance(t, dict) or t.get("table_version") != TABLE_VERSION or not isinstance(t.get("layers"), list):
            raise BadInput("the layer table is not of table_version %d" % TABLE_VERSION)
        layers = t["layers"]
        if t.get("n_params") != c.params.size or t.get("n_state") != c.state.size:
            raise BadInput("the layer table's n_params or n_state differs from the buffers")
    else:
        layers = _spec_layers(c.model_spec, [c.fields["in_c"], c.fields["in_h"], c.fields["in_w"]])
        if c.state.size:
            raise BadInput("a checkpoint without a layer table holds state: it cannot be placed")
    _check_layers(c, layers)
    return layers


def _tensor(buf, t):
    return np.array(buf[t["offset"]:t["offset"] + t["count"]], dtype=np.float32).reshape(t["shape"])


def _tensors(c, L):
    """name -> array of the layer's parameters and state."""
    out = {t["name"]: _tensor(c.params, t) for t in L["params"]}
    out.update({t["name"]: _tensor(c.state, t) for t in L["state"]})
    return out


# ---- PyTorch -------------------------------------------------------------------

def _torch_classes():
    """The module classes, made once torch is imported. Every layer module
    takes (outputs so far, network input) and picks its inputs by index
    (-1: the network input), so that the network is one loop that
    torch.jit.script compiles."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from typing import List

    def pick(outs: List[torch.Tensor], x: torch.Tensor, i: int) -> torch.Tensor:
        return x if i < 0 else outs[i]

    class Linear(nn.Linear):
        def __init__(self, src, in_features, units, bias):
            super().__init__(in_features, units, bias=bias)
            self.src = src

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            if a.dim() > 2:
                a = a.flatten(1)
            return F.linear(a, self.weight, self.bias)

    class Conv(nn.Conv2d):
        def __init__(self, src, in_shape, units, k, stride, pad, bias):
            super().__init__(in_shape[0], units, k, stride=stride, padding=pad, bias=bias)
            self.src = src
            self.in_shape = list(in_shape)

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            if a.dim() == 2:
                a = a.reshape([-1] + self.in_shape)
            return F.conv2d(a, self.weight, self.bias, self.stride, self.padding)

    class MaxPool(nn.MaxPool2d):
        def __init__(self, src, in_shape, k, stride, pad):
            super().__init__(k, stride=stride, padding=pad)
            self.src = src
            self.in_shape = list(in_shape)

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            if a.dim() == 2:
                a = a.reshape([-1] + self.in_shape)
            return F.max_pool2d(a, self.kernel_size, self.stride, self.padding)

    class AvgPool(nn.AvgPool2d):
        def __init__(self, src, in_shape, k, stride, pad):
            super().__init__(k, stride=stride, padding=pad, count_include_pad=True)
            self.src = src
            self.in_shape = list(in_shape)

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            if a.dim() == 2:
                a = a.reshape([-1] + self.in_shape)
            return F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, False, True)

    class GlobalAvgPool(nn.AdaptiveAvgPool2d):
        def __init__(self, src, in_shape):
            super().__init__(1)
            self.src = src
            self.in_shape = list(in_shape)

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            if a.dim() == 2:
                a = a.reshape([-1] + self.in_shape)
            return F.adaptive_avg_pool2d(a, 1)

    class BatchNorm(nn.BatchNorm2d):
        """Per channel of (N, C, H, W) or per feature of (N, C): the
        running statistics in evaluation mode, the batch's in training."""
        def __init__(self, src, channels, momentum, eps):
            super().__init__(channels, eps=eps, momentum=momentum)
            self.src = src
            self.bn_momentum = float(momentum)

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            return F.batch_norm(a, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                self.bn_momentum, self.eps)

    class ReLU(nn.ReLU):
        def __init__(self, src):
            super().__init__()
            self.src = src

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return F.relu(pick(outs, x, self.src))

    class Flatten(nn.Flatten):
        def __init__(self, src):
            super().__init__(1)
            self.src = src

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return pick(outs, x, self.src).flatten(1)

    class Dropout(nn.Dropout):
        """Inverted dropout while training; the identity in evaluation."""
        def __init__(self, src, p):
            super().__init__(p)
            self.src = src

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return F.dropout(pick(outs, x, self.src), self.p, self.training)

    class Add(nn.Module):
        def __init__(self, src, src2):
            super().__init__()
            self.src = src
            self.src2 = src2

        def forward(self, outs: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a = pick(outs, x, self.src)
            b = pick(outs, x, self.src2)
            if a.dim() != b.dim():
                a = a.flatten(1)
                b = b.flatten(1)
            return a + b

    class BasinNet(nn.Module):
        """A basin network: layers[i] is basin's layer i; the output is the
        last layer's, the logits (N, classes)."""
        def __init__(self, layers, in_shape, classes):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.in_shape = list(in_shape)
            self.classes = classes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs: List[torch.Tensor] = []
            for layer in self.layers:
                outs.append(layer(outs, x))
            return outs[-1]

    return dict(fc=Linear, conv=Conv, pool=MaxPool, avgpool=AvgPool, gap=GlobalAvgPool, bn=BatchNorm, relu=ReLU,
                flatten=Flatten, dropout=Dropout, add=Add, net=BasinNet)


def _import(name, package):
    try:
        return __import__(name)
    except ImportError:
        raise Failure("this needs %s for %s (Debian: apt install %s)" % (name, sys.executable, package))


def to_torch(c):
    """The network of checkpoint c (load_checkpoint) as a torch.nn.Module
    in evaluation mode, its parameters and buffers named as PyTorch names
    them (layers.<i>.weight, .bias, .running_mean, .running_var)."""
    torch = _import("torch", "python3-torch")
    K = _torch_classes()
    mods = []
    for L in c.layers:
        kind, src = L["kind"], L["inputs"][0]
        if kind == "fc":
            m = K["fc"](src, L["params"][0]["shape"][1], L["units"], L["bias"])
        elif kind == "conv":
            m = K["conv"](src, L["in_shape"], L["units"], L["kernel"], L["stride"], L["padding"], L["bias"])
        elif kind == "pool":
            m = K["pool"](src, L["in_shape"], L["kernel"], L["stride"], L["padding"])
        elif kind == "avgpool":
            m = K["avgpool"](src, L["in_shape"], L["kernel"], L["stride"], L["padding"])
        elif kind == "gap":
            m = K["gap"](src, L["in_shape"])
        elif kind == "bn":
            m = K["bn"](src, L["in_shape"][0], float(L["momentum"]), float(L["eps"]))
        elif kind == "add":
            m = K["add"](src, L["inputs"][1])
        elif kind == "dropout":
            m = K["dropout"](src, float(L["p"]))
        else:
            m = K[kind](src)
        with torch.no_grad():
            for name, value in _tensors(c, L).items():
                getattr(m, name).copy_(torch.from_numpy(value))
        mods.append(m)
    net = K["net"](mods, [c.fields["in_c"], c.fields["in_h"], c.fields["in_w"]], c.fields["classes"])
    return net.eval()


# ---- ONNX ----------------------------------------------------------------------

def to_onnx(c):
    """The network of checkpoint c as an onnx.ModelProto of opset 13: input
    "input" (N, C, H, W), output "logits" (N, classes), one node per layer
    named L<index>_<kind> (dropout is Identity), plus a node named
    L<index>_<kind>_in where a layer needs its input flattened (fc after a
    spatial layer) or given two trailing axes (a spatial layer after a flat
    one). Checked
    by onnx.checker and onnx.shape_inference."""
    onnx = _import("onnx", "python3-onnx")
    from onnx import TensorProto, helper, numpy_helper
    C, H, W = c.fields["in_c"], c.fields["in_h"], c.fields["in_w"]
    inits, nodes = [], []
    names = {-1: "input"}
    rank = {-1: 4}
    last = len(c.layers) - 1

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    for L in c.layers:
        i, kind = L["index"], L["kind"]
        tag = "L%d_%s" % (i, kind)
        out = "logits" if i == last else "%s_out" % tag
        ins = [names[s] for s in L["inputs"]]
        r = rank[L["inputs"][0]]
        ts = _tensors(c, L)

        def flat(x, r):
            if r == 2:
                return x
            nodes.append(helper.make_node("Flatten", [x], [tag + "_in"], name=tag + "_in", axis=1))
            return tag + "_in"

        def spatial(x, r):
            # A flat tensor is (N, F) for a layer output (F, 1, 1): two
            # trailing axes make it the image (N, F, 1, 1).
            if r == 4:
                return x
            inits.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), tag + "_in_axes"))
            nodes.append(helper.make_node("Unsqueeze", [x, tag + "_in_axes"], [tag + "_in"], name=tag + "_in"))
            return tag + "_in"

        if kind == "fc":
            args = [flat(ins[0], r), init(tag + ".weight", ts["weight"])]
            if "bias" in ts:
                args.append(init(tag + ".bias", ts["bias"]))
            nodes.append(helper.make_node("Gemm", args, [out], name=tag, transB=1))
            r = 2
        elif kind == "conv":
            args = [spatial(ins[0], r), init(tag + ".weight", ts["weight"])]
            if "bias" in ts:
                args.append(init(tag + ".bias", ts["bias"]))
            k, s, p = L["kernel"], L["stride"], L["padding"]
            nodes.append(helper.make_node("Conv", args, [out], name=tag, kernel_shape=[k, k], strides=[s, s],
                                          pads=[p, p, p, p]))
            r = 4
        elif kind in ("pool", "avgpool"):
            k, s, p = L["kernel"], L["stride"], L["padding"]
            extra = {"count_include_pad": 1} if kind == "avgpool" else {}
            nodes.append(helper.make_node("MaxPool" if kind == "pool" else "AveragePool", [spatial(ins[0], r)],
                                          [out], name=tag, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                                          **extra))
            r = 4
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [spatial(ins[0], r)], [out], name=tag))
            r = 4
        elif kind == "bn":
            args = [ins[0], init(tag + ".weight", ts["weight"]), init(tag + ".bias", ts["bias"]),
                    init(tag + ".running_mean", ts["running_mean"]), init(tag + ".running_var", ts["running_var"])]
            nodes.append(helper.make_node("BatchNormalization", args, [out], name=tag, epsilon=float(L["eps"]),
                                          momentum=1.0 - float(L["momentum"])))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", ins, [out], name=tag))
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", ins, [out], name=tag, axis=1))
            r = 2
        elif kind == "dropout":
            nodes.append(helper.make_node("Identity", ins, [out], name=tag))
        elif kind == "add":
            r2 = rank[L["inputs"][1]]
            a, b = ins
            if r != r2:
                nodes.append(helper.make_node("Flatten", [a], [tag + "_in"], name=tag + "_in", axis=1))
                nodes.append(helper.make_node("Flatten", [b], [tag + "_in2"], name=tag + "_in2", axis=1))
                a, b, r = tag + "_in", tag + "_in2", 2
            nodes.append(helper.make_node("Add", [a, b], [out], name=tag))
        names[i] = out
        rank[i] = r
    graph = helper.make_graph(
        nodes, "basin", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", C, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c.fields["classes"]])], inits)
    model = helper.make_model(graph, producer_name="basin-export", opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              doc_string="basin model %s; input: images normalised as (x / 255 - mean[c]) / std[c]"
                              % c.model_spec)
    model.ir_version = 7
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise Failure("the ONNX graph does not check: %s" % str(e).split("\n")[0])
    return model


# ---- the command -----------------------------------------------------------------

USAGE = """usage: basin-export CHECKPOINT --format torch|onnx --output FILE
Write the network of a basin checkpoint for use outside basin.
  --format torch   TorchScript (torch.jit.load runs it; no Python class needed)
  --format onnx    an ONNX model, opset %d (checked by onnx.checker)
  --output FILE    the file to write (replaced only once complete)
  --help           this text
The network takes images normalised as basin's reader does, (x / 255 -
mean[c]) / std[c] with the data file's mean and std, and returns the logits.
Exit status: 0 written; 1 failed (a missing package, I/O); 2 bad option,
checkpoint or output (one line on stderr, nothing written).""" % ONNX_OPSET


def _parse(argv):
    opts = {"format": None, "output": None}
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            return None
        if a.startswith("--"):
            key, eq, val = a[2:].partition("=")
            if key not in opts:
                raise BadInput("unknown option '%s' (see --help)" % a)
            if not eq:
                i += 1
                if i >= len(argv):
                    raise BadInput("option --%s needs a value (see --help)" % key)
                val = argv[i]
            opts[key] = val
        else:
            pos.append(a)
        i += 1
    if not pos:
        raise BadInput("no checkpoint given: basin-export CHECKPOINT --format torch|onnx --output FILE")
    if len(pos) > 1:
        raise BadInput("unexpected argument '%s' (one checkpoint; options start with --)" % pos[1])
    if opts["format"] not in ("torch", "onnx"):
        raise BadInput("--format %s: expected torch or onnx" % ("'%s'" % opts["format"] if opts["format"] is not None
                                                             else "missing"))
    if not opts["output"]:
        raise BadInput("--output FILE is missing")
    return pos[0], opts["format"], opts["output"]


def _temp_beside(output):
    """A new temporary file in output's folder (so that the rename is
    atomic); BadInput when it cannot be made there."""
    if os.path.isdir(output):
        raise BadInput("--output %s is a folder" % output)
    folder = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(output), suffix=".tmp", dir=folder)
    except OSError as e:
        raise BadInput("--output %s: cannot write in %s: %s" % (output, folder, e.strerror or e))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
    return tmp


def export(checkpoint, fmt, output):
    """Write checkpoint's network as fmt ("torch" or "onnx") to output;
    returns a line describing what was written."""
    c = load_checkpoint(checkpoint)
    if os.path.isdir(output):
        raise BadInput("--output %s is a folder" % output)
    _import("torch", "python3-torch") if fmt == "torch" else _import("onnx", "python3-onnx")
    tmp = _temp_beside(output)
    try:
        if fmt == "torch":
            import torch
            script = torch.jit.script(to_torch(c))
            torch.jit.save(script, tmp)
        else:
            import onnx
            onnx.save(to_onnx(c), tmp)
        os.replace(tmp, output)
    except OSError as e:
        raise Failure("writing %s failed: %s" % (output, e.strerror or e))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    what = "TorchScript" if fmt == "torch" else "ONNX (opset %d)" % ONNX_OPSET
    return "basin-export: wrote %s: %s of %s, %d layers, %d parameters%s (format version %d)" % (
        output, what, c.model_spec, len(c.layers), c.params.size,
        ", %d state values" % c.state.size if c.state.size else "", c.format_version)


def main(argv):
    try:
        args = _parse(argv)
        if args is None:
            print(USAGE)
            return 0
        print(export(*args))
        return 0
    except BadInput as e:
        sys.stderr.write("basin-export: error: %s\n" % e)
        return 2
    except Failure as e:
        sys.stderr.write("basin-export: error: %s\n" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
