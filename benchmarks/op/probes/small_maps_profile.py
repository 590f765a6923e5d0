"""Time one msa_conv2d shape on the fused CPU backend in a loop, for `perf record` (see small_maps_profile_avx512.md).

usage: python small_maps_profile.py H B heads backward(0/1) layout(bhwd/bhdhw) seconds
"""
import sys, time, torch
from msaconv.ops import msa_conv2d
torch.set_num_threads(1)
H, B, h = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); bwd = sys.argv[4] == "1"; layout = sys.argv[5]
D = 32
shape = (B, h, H, H, D) if layout == "bhwd" else (B, h, D, H, H)
q, k, v = [torch.randn(shape, requires_grad=bwd) for _ in range(3)]
def f():
    o = msa_conv2d(q, k, v, 3, backend="cpu", layout=layout)
    if bwd: o.sum().backward()
for _ in range(3): f()
t = time.perf_counter(); n = 0
while time.perf_counter() - t < float(sys.argv[6]): f(); n += 1
print(f"{H}x{H} B{B} h{h} bwd={bwd} {layout}: {(time.perf_counter()-t)/n*1e3:.2f} ms/call")
