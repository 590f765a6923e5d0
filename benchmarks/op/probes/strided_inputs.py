import time, torch, sys
from msaconv.ops import msa_conv2d
torch.set_num_threads(2)
def views(B, h, H, D=32):
    x = torch.randn(B, 3 * h * D, H, H).contiguous(memory_format=torch.channels_last)
    qkv = x.view(B, 3, h, D, H, H)
    return [qkv[:, i] for i in range(3)]
def bench(fn, n=15):
    for _ in range(3): fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3
for B, h, H in [(256, 1, 32), (256, 2, 16), (256, 4, 8), (256, 4, 4), (8, 4, 56)]:
    q, k, v = views(B, h, H)
    for grad in (False, True):
        def run(contig):
            qq, kk, vv = ((t.contiguous() if contig else t).requires_grad_(grad) for t in (q.detach(), k.detach(), v.detach()))
            def f():
                if grad:
                    out = msa_conv2d(qq, kk, vv, 3 if H < 56 else 7, layout="bhdhw", backend="cpu")
                    out.backward(torch.ones_like(out))
                else:
                    with torch.no_grad():
                        msa_conv2d(qq, kk, vv, 3 if H < 56 else 7, layout="bhdhw", backend="cpu")
            def g():
                if contig:  # the copy counts
                    a = [t.detach().contiguous().requires_grad_(grad) for t in (q, k, v)]
                    if grad:
                        out = msa_conv2d(*a, 3 if H < 56 else 7, layout="bhdhw", backend="cpu"); out.backward(torch.ones_like(out))
                    else:
                        with torch.no_grad(): msa_conv2d(*a, 3 if H < 56 else 7, layout="bhdhw", backend="cpu")
                else:
                    f()
            return g
        a, b = run(False), run(True)
        ra, rb = [], []
        for _ in range(3):
            ra.append(bench(a)); rb.append(bench(b))
        print(f"B{B} h{h} H{H} {'fwdbwd' if grad else 'fwd'}: strided {min(ra):.2f} ms, copy-then-contiguous {min(rb):.2f} ms, ratio {min(ra)/min(rb):.2f}", flush=True)
