"""Interleaved A/B of two kernel builds on bhwd (D-inner) inputs: python ab_bhwd_builds.py OLD_BUILD_DIR NEW_BUILD_DIR ROUNDS

Both builds must take the bhwd_out argument (the kernels that read any strides). Prints the fastest time of each."""
import sys, time, glob, os, importlib.util, torch
torch.set_num_threads(2)
def load(folder):
    so = glob.glob(os.path.join(folder, "*.so"))[0]
    spec = importlib.util.spec_from_file_location(os.path.basename(so)[:-3], so)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
old, new = load(sys.argv[1]), load(sys.argv[2])
for B, h, H, k in [(8, 4, 56, 7), (256, 2, 8, 3), (256, 1, 16, 3)]:
    D = 32
    q, kk, v = (torch.randn(B, h, H, H, D).permute(0, 1, 4, 2, 3) for _ in range(3))
    args = (k, k, 1, 1, 1, 1, 0, D ** -0.5, True)
    o1, l1 = old.forward(q, kk, v, None, None, *args); o2, l2 = new.forward(q, kk, v, None, None, *args)
    assert torch.equal(o1, o2)
    g = torch.randn(B, h, H, H, D).permute(0, 1, 4, 2, 3)
    b1 = old.backward(g, q, kk, v, None, None, o1, l1, *args); b2 = new.backward(g, q, kk, v, None, None, o1, l1, *args)
    assert all(torch.equal(x, y) for x, y in zip(b1[:3], b2[:3]))
    res = {}
    for tag, fn in (("fwd", lambda m: m.forward(q, kk, v, None, None, *args)),
                    ("fwd+bwd", lambda m: (m.forward(q, kk, v, None, None, *args), m.backward(g, q, kk, v, None, None, o1, l1, *args)))):
        best = {"old": 1e9, "new": 1e9}
        for r in range(int(sys.argv[3])):
            for name, m in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
                t = time.perf_counter(); fn(m); best[name] = min(best[name], time.perf_counter() - t)
        res[tag] = best
    print(f"B{B} h{h} {H}x{H} k{k} bhwd: " + "; ".join(f"{t} old {b['old']*1e3:.2f} new {b['new']*1e3:.2f} ms (new/old {b['new']/b['old']:.2f})" for t, b in res.items()), flush=True)
