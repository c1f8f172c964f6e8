"""The same network in PyTorch (float64, torch.nn.functional), on the
weights, input and running statistics torch_dump wrote: the logits, the
mean loss, every parameter gradient and the running statistics after the
step must agree with basin's to a relative error (norm of the difference
over norm of the reference, per tensor) of at most 1e-4.

ReLU's kink. A pre-activation within float32 rounding of 0 can land on
either side in basin (float32) and here (float64), and the two then pass
or stop that element's gradient: a difference in one channel's whole chain
that is no error of either. So each relu takes the side basin took
(relu<I>.bin: basin's output > 0), after checking that wherever the sides
differ the float64 pre-activation is within KINK of 0 relative to its
tensor's largest value; a sign that differs anywhere else fails the test.

    torch_compare.py DIR     exit 0 agree, 1 differ, 77 no PyTorch
"""
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the test is skipped, not failed
    print(f"torch_compare: skipped: {e}")
    sys.exit(77)

TOL = 1e-4
KINK = 1e-5
d = sys.argv[1]
load = lambda name, dt=np.float32: np.fromfile(f"{d}/{name}", dtype=dt)
params = torch.tensor(load("params.bin").astype(np.float64), requires_grad=True)
state = torch.tensor(load("state0.bin").astype(np.float64))
layers = []
for line in open(f"{d}/layers.txt"):
    f = line.split()
    L = dict(i=int(f[0]), kind=f[1], src=int(f[2]), src2=int(f[3]), inc=int(f[4]), inh=int(f[5]),
             inw=int(f[6]), outc=int(f[7]), outh=int(f[8]), outw=int(f[9]), units=int(f[10]), k=int(f[11]),
             stride=int(f[12]), pad=int(f[13]), w_off=int(f[14]), w_count=int(f[15]), b_off=int(f[16]),
             b_count=int(f[17]), s_off=int(f[18]), s_count=int(f[19]), mom=float(f[20]), eps=float(f[21]))
    layers.append(L)
x0 = torch.tensor(load("x.bin").astype(np.float64))
labels = torch.tensor(load("labels.bin", np.int32).astype(np.int64))
n = labels.numel()
first = layers[0]
x0 = x0.view(n, first["inc"], first["inh"], first["inw"])

out = []
kinks = 0
for L in layers:
    x = x0 if L["src"] < 0 else out[L["src"]]
    w = params[L["w_off"]:L["w_off"] + L["w_count"]]
    b = params[L["b_off"]:L["b_off"] + L["b_count"]] if L["b_count"] else None
    k = L["kind"]
    if k == "conv":
        y = F.conv2d(x.reshape(n, L["inc"], L["inh"], L["inw"]), w.view(L["units"], L["inc"], L["k"], L["k"]), b,
                     stride=L["stride"], padding=L["pad"])
    elif k == "fc":
        y = F.linear(x.reshape(n, -1), w.view(L["units"], -1), b)
    elif k == "bn":
        c = L["inc"]
        rm = state[L["s_off"]:L["s_off"] + c].clone()
        rv = state[L["s_off"] + c:L["s_off"] + 2 * c].clone()
        shape = (n, c, L["inh"], L["inw"])
        y = F.batch_norm(x.reshape(shape), rm, rv, w, b, training=True, momentum=L["mom"], eps=L["eps"])
        state[L["s_off"]:L["s_off"] + c] = rm
        state[L["s_off"] + c:L["s_off"] + 2 * c] = rv
    elif k == "relu":
        mask = torch.tensor(load(f"relu{L['i']}.bin").astype(np.float64) > 0).view(x.shape)
        flip = mask != (x.detach() > 0)
        if flip.any():
            far = flip & (x.detach().abs() > KINK * x.detach().abs().max())
            if far.any():
                raise SystemExit(f"torch_compare: layer {L['i'] + 1} (relu): {int(far.sum())} inputs of "
                                 f"|x| > {KINK:g} max |x| fall on the other side of 0 than in basin")
            kinks += int(flip.sum())
        y = x * mask
    elif k == "pool":
        y = F.max_pool2d(x, L["k"], L["stride"], L["pad"])
    elif k == "avgpool":
        y = F.avg_pool2d(x, L["k"], L["stride"], L["pad"], count_include_pad=True)
    elif k == "gap":
        y = F.adaptive_avg_pool2d(x.reshape(n, L["inc"], L["inh"], L["inw"]), 1)
    elif k == "add":
        y = x + (x0 if L["src2"] < 0 else out[L["src2"]])
    elif k == "flatten":
        y = x.reshape(n, -1, 1, 1)
    elif k == "dropout":
        raise SystemExit("torch_compare: dropout draws are basin's own; use a model without dropout")
    else:
        raise SystemExit(f"torch_compare: unknown layer kind {k}")
    out.append(y.reshape(n, L["outc"], L["outh"], L["outw"]))
logits = out[-1].reshape(n, -1)
loss = F.cross_entropy(logits, labels, reduction="mean")
loss.backward()

def rel(name, ours, ref):
    ref = np.asarray(ref, dtype=np.float64).ravel()
    ours = np.asarray(ours, dtype=np.float64).ravel()
    err = np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30)
    return err

bad = 0
checks = [("logits", load("logits.bin"), logits.detach().numpy()),
          ("loss", [float(open(f"{d}/loss.txt").read())], [loss.item()])]
grads = load("grads.bin")
ref_grads = params.grad.numpy()
for L in layers:
    for part, off, cnt in (("weight", L["w_off"], L["w_count"]), ("bias", L["b_off"], L["b_count"])):
        if cnt:
            checks.append((f"layer {L['i'] + 1} ({L['kind']}) d{part}", grads[off:off + cnt],
                           ref_grads[off:off + cnt]))
    if L["s_count"]:
        st = load("state.bin")
        c = L["inc"]
        for part, off in (("running mean", L["s_off"]), ("running var", L["s_off"] + c)):
            checks.append((f"layer {L['i'] + 1} (bn) {part}", st[off:off + c], state.numpy()[off:off + c]))
worst = 0.0
for name, ours, ref in checks:
    e = rel(name, ours, ref)
    worst = max(worst, e)
    if not e <= TOL:
        bad += 1
        print(f"torch_compare: {name}: relative error {e:.3g} > {TOL:g}")
print(f"torch_compare: {len(checks)} tensors, worst relative error {worst:.3g}; "
      f"{kinks} relu input(s) within rounding of 0 took basin's side")
sys.exit(1 if bad else 0)
