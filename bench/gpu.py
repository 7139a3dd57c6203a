"""GPU check and timing: each fast backend's kernels against the reference, then the end-to-end `apply`
(generator + segmentation head) and one refinement step at EditGAN's car configuration
(512 px config-f generator, 16 feature maps, crop 384x512, 32 classes, 10 ensemble members), as a table.

    python bench/gpu.py [--reps 20] [--batch 1] [--dtype float32|bfloat16]
    python bench/gpu.py --roofline      # the paper plan: FLOPs, bytes and H100 roofline times (no GPU needed)

Random weights throughout (never downloaded): timings do not depend on the values. Without a CUDA device it
says so and exits 0. See docs/gpu-performance.md for the roofline predictions these numbers are checked against.
"""
import argparse
import statistics
import sys

import torch

from editgan_fast import backend
from editgan_fast.ops import PixelMLP, bias_act, modulated_conv2d, seg_head, setup_filter, upfirdn2d

CAR = {"size": 512, "out_size": (512, 512), "crop": (64, 448, 0, 512), "classes": 32, "members": 10}
# rosinality's config-f channel table at 512 px (channel_multiplier 2).
CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
# The generator's feature maps in EditGAN order: const and conv1 at 4 px, then two convs per resolution.
FEATURES = [(512, 4), (512, 4)] + [(CHANNELS[r], r) for r in (8, 16, 32, 64, 128, 256, 512) for _ in (0, 1)]

# H100 SXM roofline assumptions (docs/gpu-performance.md): dense peaks and bandwidths, bytes per element.
H100 = {"hbm": 3.0e12, "l2": 7.0e12, "bf16": 790e12, "tf32": 395e12, "fp32": 67e12, "launch_s": 4e-6}


def roofline_s(flops, bytes_moved, peak, bandwidth=H100["hbm"]):
    return max(flops / peak, bytes_moved / bandwidth)


def generator_layers(batch=1, elem=2):
    """(name, FLOPs, minimum bytes) per conv layer of the 512 px config-f generator. FLOPs = 2*N*Cout*Cin*k*k*H*W
    at the output resolution; for the up convs that is the fused polyphase kernel's count (9 input taps per
    output pixel), 4x the bare transposed conv. Bytes: weights once, input and output activations once."""
    rows = [("conv1 3x3 512->512 @4", 2 * batch * 512 * 512 * 9 * 16,
             elem * (512 * 512 * 9 + 2 * batch * 512 * 16)),
            ("to_rgb1 1x1 512->3 @4", 2 * batch * 3 * 512 * 16, elem * (3 * 512 + batch * 515 * 16))]
    for r in (8, 16, 32, 64, 128, 256, 512):
        cin, c = CHANNELS[r // 2], CHANNELS[r]
        rows.append((f"conv up 3x3 {cin}->{c} @{r}", 2 * batch * c * cin * 9 * r * r,
                     elem * (c * cin * 9 + batch * (cin * r * r // 4 + c * r * r))))
        rows.append((f"conv 3x3 {c}->{c} @{r}", 2 * batch * c * c * 9 * r * r,
                     elem * (c * c * 9 + 2 * batch * c * r * r)))
        rows.append((f"to_rgb 1x1 {c}->3 +skip @{r}", 2 * batch * 3 * c * r * r,
                     elem * (3 * c + batch * (c * r * r + 3 * r * r // 4 + 3 * r * r))))
    return rows


def seg_head_stages(batch=1, members=10, h1=256, h2=128, classes=32, crop_pixels=384 * 512, low_max=128):
    """(name, FLOPs, bytes, peak, bandwidth) of the segmentation head at the car configuration, for the cuda
    backend as built and for the tensor-core plan. K = members * h1 first-layer units."""
    k, px = members * h1, batch * crop_pixels
    sizes = sorted({r for _, r in FEATURES})
    dense = 2 * px * members * (h1 * h2 + h2 * classes)
    proj_all = sum(2 * batch * c * k * r * r for c, r in FEATURES)
    taps = sum(1 if r == CAR["out_size"][0] else 4 for r in sizes)  # same-size maps summed; identity = 1 tap
    built = [
        ("built: projection GEMMs, TF32, fp32 out", proj_all, 4 * batch * k * sum(r * r for r in sizes),
         H100["tf32"], H100["hbm"]),
        (f"built: tile gather ({taps} taps x K fp32 per pixel)", 2 * px * taps * k, 4 * px * taps * k,
         H100["fp32"], H100["l2"]),
        ("built: dense layers 2-3, fp32 CUDA cores", dense, 0, H100["fp32"], H100["hbm"]),
    ]
    low = [(c, r) for c, r in FEATURES if r <= low_max]
    high = [(c, r) for c, r in FEATURES if r > low_max]
    low_sizes = sorted({r for _, r in low})
    # A tile of 8x16 output pixels reads (8r/512 + 2) x (16r/512 + 2) source pixels of a size-r projection.
    tiles = px // 128
    src = sum((8 * r // 512 + 2) * (16 * r // 512 + 2) for r in low_sizes)
    plan = [
        (f"plan: project maps <= {low_max} px, bf16", sum(2 * batch * c * k * r * r for c, r in low),
         2 * batch * k * sum(r * r for r in low_sizes), H100["bf16"], H100["hbm"]),
        ("plan: gather as per-tile GEMM, bf16", 2 * tiles * 128 * src * k, 2 * tiles * src * k,
         H100["bf16"], H100["l2"]),
        (f"plan: maps > {low_max} px direct, bf16", 2 * px * sum(c for c, _ in high) * k,
         2 * batch * sum(c * r * r for c, r in high), H100["bf16"], H100["hbm"]),
        ("plan: dense layers 2-3, bf16", dense, 0, H100["bf16"], H100["hbm"]),
    ]
    return built, plan


def print_roofline():
    gen = generator_layers()
    print(f"{'generator layer (batch 1, bf16)':36s} {'GFLOP':>8s} {'MB':>8s} {'us':>8s}")
    total_f = total_b = total_t = 0.0
    for name, f, b in gen:
        t = roofline_s(f, b, H100["bf16"])
        total_f, total_b, total_t = total_f + f, total_b + b, total_t + t
        print(f"{name:36s} {f / 1e9:8.2f} {b / 1e6:8.2f} {t * 1e6:8.2f}")
    print(f"{'generator total':36s} {total_f / 1e9:8.2f} {total_b / 1e6:8.2f} {total_t * 1e6:8.2f}")
    built, plan = seg_head_stages()
    seg = {}
    for label, stages in (("built", built), ("plan", plan)):
        print(f"\n{'seg head stage (' + label + ')':48s} {'GFLOP':>8s} {'GB':>8s} {'ms':>8s}")
        seg[label] = 0.0
        for name, f, b, peak, bw in stages:
            t = roofline_s(f, b, peak, bw)
            seg[label] += t
            print(f"{name:48s} {f / 1e9:8.1f} {b / 1e9:8.2f} {t * 1e3:8.3f}")
        print(f"{'total':48s} {'':8s} {'':8s} {seg[label] * 1e3:8.3f}")
    launches = (len(gen) + 10) * H100["launch_s"]
    for label in ("built", "plan"):
        print(f"apply roofline ({label} seg head): {(total_t + seg[label] + launches) * 1e3:.2f} ms (target 10 ms)")
    # Refinement step: generator forward + backward to its input and styles (2x the forward FLOPs; the weights
    # are frozen), the planned seg head forward + backward (~2x: the transposed first layer and dense layers),
    # LPIPS' VGG16 on the 384x512 crop forward + backward to the image (30.7 GFLOP at 224 px, scaled by area).
    lpips = 2 * 30.7e9 * (384 * 512) / (224 * 224)
    step = 3 * total_t + 3 * seg["plan"] + lpips / H100["bf16"] + 3 * launches
    print(f"refinement step roofline (plan, bf16): {step * 1e3:.2f} ms (target 25 ms); "
          f"LPIPS {lpips / 1e9:.0f} GFLOP")
    return 0


def cuda_time_ms(fn, reps, warmup=3):
    """Median wall time of fn() in milliseconds, measured with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_error(got, ref):
    if isinstance(got, (tuple, list)):
        got, ref = got[0], ref[0]
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def random_members(dim, classes, count, device):
    """DatasetGAN pixel classifiers: hidden 256/128 for 32+ classes, else 128/32."""
    h1, h2 = (256, 128) if classes >= 32 else (128, 32)
    r = lambda *s: torch.randn(s, device=device)
    return [PixelMLP(weights=(r(h1, dim) / dim ** 0.5, r(h2, h1) / h1 ** 0.5, r(classes, h2) / h2 ** 0.5),
                     biases=(r(h1), r(h2), r(classes)), bn_mean=(r(h1), r(h2)),
                     bn_var=(torch.rand(h1, device=device) + 0.5, torch.rand(h2, device=device) + 0.5),
                     bn_weight=(r(h1), r(h2)), bn_bias=(r(h1), r(h2))) for _ in range(count)]


def kernel_cases(device, batch, feature_shapes, members):
    """(name, thunk running the op under the current backend) at the car model's largest shapes."""
    x512 = torch.randn(batch, 64, 512, 512, device=device)
    b64 = torch.randn(64, device=device)
    rgb256 = torch.randn(batch, 3, 256, 256, device=device)
    f = setup_filter([1, 3, 3, 1], device=device)
    x256 = torch.randn(batch, 128, 256, 256, device=device)
    w = torch.randn(64, 128, 3, 3, device=device) / (128 * 9) ** 0.5
    styles = torch.randn(batch, 128, device=device)
    wsq = w.square().sum([2, 3])
    feats = [torch.randn(batch, c, r, r, device=device) for c, r in feature_shapes]
    return [
        ("bias_act lrelu [N,64,512,512]", lambda: bias_act(x512, b64, act="lrelu", clamp=256)),
        ("upfirdn2d skip up [N,3,256,256]", lambda: upfirdn2d(rgb256, f, up=2, padding=(2, 1, 2, 1), gain=4)),
        ("upfirdn2d blur [N,64,512,512]", lambda: upfirdn2d(x512, f, padding=(1, 2, 1, 2))),
        ("modulated_conv2d up 128->64 @256", lambda: modulated_conv2d(x256, w, styles, up=2, resample_filter=f,
                                                                       wsq=wsq, act="lrelu")),
        ("seg_head car (bilinear)", lambda: seg_head(feats, members, CAR["out_size"], crop=CAR["crop"])),
    ]


def check_kernels(device, batch, dtype, reps, feature_shapes, members):
    rows = []
    cases = kernel_cases(device, batch, feature_shapes, members)
    with torch.no_grad():
        for name, fn in cases:
            with backend.use_backend("reference"):
                ref = fn()
                ref_ms = cuda_time_ms(fn, reps)
            rows.append((name, "reference", 0.0, ref_ms))
            for b in ("triton", "cuda"):
                if not backend.available(b):
                    rows.append((name, b, float("nan"), float("nan")))
                    continue
                with backend.use_backend(b, dtype=dtype):
                    got = fn()
                    ms = cuda_time_ms(fn, reps)
                rows.append((name, b, rel_error(got, ref), ms))
    return rows


def end_to_end(device, batch, dtype, reps, name):
    from editgan_fast.models.generator import Generator

    gen = Generator(CAR["size"]).to(device).eval().requires_grad_(False)
    with torch.no_grad():
        feats = gen.synthesis(torch.randn(batch, gen.num_ws, gen.style_dim, device=device), return_features=True)[1]
    members = random_members(sum(f.shape[1] for f in feats), CAR["classes"], CAR["members"], device)
    wplus = gen.mean_latent().expand(batch, gen.num_ws, -1).contiguous()
    delta = 0.1 * torch.randn_like(wplus)
    out = []

    def apply():
        with torch.no_grad():
            image, features = gen.synthesis(wplus + delta, return_features=True)
            return image, seg_head(features, members, CAR["out_size"], crop=CAR["crop"]).argmax(1)

    target = torch.randint(0, CAR["classes"], (batch, 384, 512), device=device)
    region = torch.zeros(384, 512, dtype=torch.bool, device=device)
    region[100:250, 150:350] = True
    latent = delta.clone().requires_grad_()
    opt = torch.optim.Adam([latent], lr=0.01)
    with torch.no_grad():
        image0 = gen.synthesis(wplus)

    def refine_step():
        # EditGAN's loss: cross-entropy on the edited region (nearest-upsampled features) plus an image term
        # outside it (LPIPS in the editor; a masked L2 stand-in here, since no LPIPS weights are downloaded).
        opt.zero_grad(set_to_none=True)
        image, features = gen.synthesis(wplus + latent, return_features=True)
        logits = seg_head(features, members, CAR["out_size"], crop=CAR["crop"], mode="nearest", region=region)
        ce = torch.nn.functional.cross_entropy(logits, target[:, region])
        keep = (~region).float()
        l2 = ((image - image0)[:, :, 64:448] * keep).square().mean()
        (ce + l2).backward()
        opt.step()

    with backend.use_backend(name, dtype=dtype):
        out.append((f"apply (generator + seg head), batch {batch}", name, cuda_time_ms(apply, reps)))
        out.append((f"refinement step, batch {batch}", name, cuda_time_ms(refine_step, reps)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--roofline", action="store_true", help="print the predicted H100 numbers and exit")
    args = parser.parse_args(argv)
    if args.roofline:
        return print_roofline()
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; nothing to check or time (see docs/gpu-performance.md for "
              "the predicted H100 numbers)")
        return 0
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = args.dtype == "float32"
    torch.backends.cudnn.allow_tf32 = args.dtype == "float32"
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, batch {args.batch}, median of {args.reps}")
    print("backends available: " + ", ".join(f"{b}={backend.available(b)}" for b in ("triton", "cuda")))

    feature_shapes = FEATURES
    members = random_members(sum(c for c, _ in feature_shapes), CAR["classes"], CAR["members"], device)

    print(f"\n{'kernel':40s} {'backend':10s} {'rel err':>10s} {'ms':>9s}")
    for name, b, err, ms in check_kernels(device, args.batch, dtype, args.reps, feature_shapes, members):
        print(f"{name:40s} {b:10s} {err:10.2e} {ms:9.3f}")

    print(f"\n{'stage':40s} {'backend':10s} {'ms':>9s} {'target':>8s}")
    targets = {"apply": 10.0, "refinement": 25.0}
    for b in ("triton", "cuda"):
        if not backend.available(b):
            print(f"{'(end to end)':40s} {b:10s} {'unavailable':>9s}")
            continue
        try:
            rows = end_to_end(device, args.batch, dtype, args.reps, b)
        except ImportError as e:
            print(f"end to end skipped: the generator is not importable ({e})")
            break
        for stage, name, ms in rows:
            target = targets[stage.split()[0]]
            print(f"{stage:40s} {name:10s} {ms:9.3f} {'<' if ms < target else '>='}{target:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
