import time, torch, math
torch.set_num_threads(1)
from singleshot.coverage import fit_default_boxes, coverage
from singleshot.models import build_model
g = torch.Generator().manual_seed(1)
n = 3000
H, W = 300., 400.
size = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.03), math.log(0.6), generator=g)) * H
ar = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.5), math.log(2.), generator=g))
bw, bh = size * ar.sqrt(), size / ar.sqrt()
cx = torch.rand(n, generator=g, dtype=torch.float64) * (W - bw) + bw / 2
cy = torch.rand(n, generator=g, dtype=torch.float64) * (H - bh) + bh / 2
boxes = torch.stack([(cx - bw/2)/W, (cy - bh/2)/H, (cx + bw/2)/W, (cy + bh/2)/H], 1)
m = build_model("ssd_small", 3)
t = time.process_time()
fit = fit_default_boxes(boxes, m.feature_sizes(m.image_size), image_size=m.image_size, scales=m.scales, aspect_ratios=m.aspect_ratios, steps=m.steps, clip=m.clip)
print("cpu", time.process_time() - t)
print(fit.model_options); print("\n".join(fit.changes))
m2 = build_model("ssd_small", 3, **fit.model_options)
print(len(m2.priors), coverage(boxes, m2.priors).coverage, fit.after.coverage)
