"""GPU check and timing: each fast backend's kernels against the reference (error bounds per storage dtype),
then the end-to-end `apply` (generator + segmentation head; through the Editor eager and replayed from a CUDA
graph) and one refinement step, as tables. Configurations:
EditGAN's car model (512 px config-f generator, 16 feature maps, crop 384x512, 32 classes, 10 members) and a
1024 px face model (18 maps, no crop, 34 classes, 10 members).

    python bench/gpu.py [--config car|face1024] [--dtype float32|bfloat16] [--reps 20] [--batch 1]
                        [--check] [--markdown report.md]
    python bench/gpu.py --roofline      # the paper plan: FLOPs, bytes and H200 roofline times (no GPU needed)

--check exits 1 when an error is over its bound (fp32 storage 1e-4, bf16 5e-2, relative to max |reference|)
or a fast backend is unavailable; bench/gpu_check.sh runs it that way. Random weights throughout (never
downloaded): timings do not depend on the values. Without a CUDA device it says so and exits 0 (1 with --check).
See docs/gpu-performance.md for the roofline predictions these numbers are checked against.
"""
import argparse
import statistics
import sys

import torch

from editgan_fast import backend
from editgan_fast.editor import Editor, EditVector, Latent
from editgan_fast.errors import BackendUnavailable
from editgan_fast.models.segmenter import Segmenter
from editgan_fast.ops import PixelMLP, bias_act, modulated_conv2d, seg_head, setup_filter, upfirdn2d

# The checked configurations: EditGAN's car model and a 1024 px face model (DatasetGAN's 34 face classes).
CONFIGS = {
    "car": dict(size=512, out_size=(512, 512), crop=(64, 448, 0, 512), classes=32, members=10),
    "face1024": dict(size=1024, out_size=(1024, 1024), crop=None, classes=34, members=10),
}
# Error bounds (max |fast - reference| / max |reference|) per storage dtype; the reference runs in fp32, TF32 off.
BOUNDS = {"float32": 1e-4, "bfloat16": 5e-2}
# config-f channels at resolution r (channel multiplier 2).
CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}


def feature_shapes(size):
    """(channels, resolution) of the generator's feature maps in EditGAN order."""
    res = [2 ** k for k in range(3, size.bit_length())]
    return [(CHANNELS[4], 4)] * 2 + [(CHANNELS[r], r) for r in res for _ in (0, 1)]

CAR = CONFIGS["car"]
FEATURES = feature_shapes(CAR["size"])

# H200 SXM roofline assumptions (docs/gpu-performance.md): dense peaks and bandwidths. L2 is assumed at about
# twice HBM; fp32 CUDA cores and TF32 as on the H100 (same SM).
H200 = {"hbm": 4.8e12, "l2": 10e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "launch_s": 4e-6}


def roofline_s(flops, bytes_moved, peak, bandwidth=H200["hbm"]):
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


def seg_head_stages(batch=1, members=10, h1=256, h2=128, classes=32, crop_pixels=384 * 512, low_max=128,
                    band_overlap=1.02):
    """(name, FLOPs, bytes, peak, bandwidth) of the segmentation head at the car configuration: the Triton head
    as built (bands of output rows, bf16 storage), the cuda backend's head, and the tensor-core plan.
    K = members * h1 first-layer units."""
    k, px = members * h1, batch * crop_pixels
    sizes = sorted({r for _, r in FEATURES})
    dense = 2 * px * members * (h1 * h2 + h2 * classes)
    proj_all = sum(2 * batch * c * k * r * r for c, r in FEATURES)
    proj_rows = batch * sum(r * r for r in sizes)  # same-size maps projected into one buffer
    taps = sum(1 if r == CAR["out_size"][0] else 4 for r in sizes)  # same-size maps summed; identity = 1 tap
    built = [  # kernels/seg_head.py: every tap is loaded (the identity-size group's 3 zero-weight ones too)
        ("built: band projection GEMMs, bf16", proj_all * band_overlap, 2 * band_overlap * k * proj_rows,
         H200["bf16"], H200["hbm"]),
        (f"built: gather ({4 * len(sizes)} taps x K bf16 per pixel)", 2 * px * 4 * len(sizes) * k,
         2 * px * 4 * len(sizes) * k, H200["fp32"], H200["l2"]),
        ("built: dense layers 2-3, bf16 tensor cores", dense, 0, H200["bf16"], H200["hbm"]),
    ]
    cuda = [
        ("cuda: projection GEMMs, TF32, fp32 out", proj_all, 4 * k * proj_rows, H200["tf32"], H200["hbm"]),
        (f"cuda: tile gather ({taps} taps x K fp32 per pixel)", 2 * px * taps * k, 4 * px * taps * k,
         H200["fp32"], H200["l2"]),
        ("cuda: dense layers 2-3, fp32 CUDA cores", dense, 0, H200["fp32"], H200["hbm"]),
    ]
    low = [(c, r) for c, r in FEATURES if r <= low_max]
    high = [(c, r) for c, r in FEATURES if r > low_max]
    low_sizes = sorted({r for _, r in low})
    # A tile of 8x16 output pixels reads (8r/512 + 2) x (16r/512 + 2) source pixels of a size-r projection.
    tiles = px // 128
    src = sum((8 * r // 512 + 2) * (16 * r // 512 + 2) for r in low_sizes)
    plan = [
        (f"plan: project maps <= {low_max} px, bf16", sum(2 * batch * c * k * r * r for c, r in low),
         2 * batch * k * sum(r * r for r in low_sizes), H200["bf16"], H200["hbm"]),
        ("plan: gather as per-tile GEMM, bf16", 2 * tiles * 128 * src * k, 2 * tiles * src * k,
         H200["bf16"], H200["l2"]),
        (f"plan: maps > {low_max} px direct, bf16", 2 * px * sum(c for c, _ in high) * k,
         2 * batch * sum(c * r * r for c, r in high), H200["bf16"], H200["hbm"]),
        ("plan: dense layers 2-3, bf16", dense, 0, H200["bf16"], H200["hbm"]),
    ]
    return built, cuda, plan


def print_roofline():
    gen = generator_layers()
    print(f"{'generator layer (batch 1, bf16)':36s} {'GFLOP':>8s} {'MB':>8s} {'us':>8s}")
    total_f = total_b = total_t = 0.0
    for name, f, b in gen:
        t = roofline_s(f, b, H200["bf16"])
        total_f, total_b, total_t = total_f + f, total_b + b, total_t + t
        print(f"{name:36s} {f / 1e9:8.2f} {b / 1e6:8.2f} {t * 1e6:8.2f}")
    print(f"{'generator total':36s} {total_f / 1e9:8.2f} {total_b / 1e6:8.2f} {total_t * 1e6:8.2f}")
    built, cuda, plan = seg_head_stages()
    seg = {}
    for label, stages in (("built", built), ("cuda", cuda), ("plan", plan)):
        print(f"\n{'seg head stage (' + label + ')':48s} {'GFLOP':>8s} {'GB':>8s} {'ms':>8s}")
        seg[label] = 0.0
        for name, f, b, peak, bw in stages:
            t = roofline_s(f, b, peak, bw)
            seg[label] += t
            print(f"{name:48s} {f / 1e9:8.1f} {b / 1e9:8.2f} {t * 1e3:8.3f}")
        print(f"{'total':48s} {'':8s} {'':8s} {seg[label] * 1e3:8.3f}")
    launches = (len(gen) + 10) * H200["launch_s"]
    for label in ("built", "cuda", "plan"):
        print(f"apply roofline ({label} seg head): {(total_t + seg[label] + launches) * 1e3:.2f} ms (target 10 ms)")
    # Refinement step: generator forward + backward to its input and styles (2x the forward FLOPs; the weights
    # are frozen), the planned seg head forward + backward (~2x: the transposed first layer and dense layers),
    # LPIPS' VGG16 on the 384x512 crop forward + backward to the image (30.7 GFLOP at 224 px, scaled by area).
    lpips = 2 * 30.7e9 * (384 * 512) / (224 * 224)
    step = 3 * total_t + 3 * seg["plan"] + lpips / H200["bf16"] + 3 * launches
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


def kernel_cases(device, batch, config, members):
    """(name, thunk running the op under the current backend) at the configuration's largest shapes."""
    size = config["size"]
    top, half = CHANNELS[size], CHANNELS[size // 2]
    x = torch.randn(batch, top, size, size, device=device)
    b = torch.randn(top, device=device)
    rgb = torch.randn(batch, 3, size // 2, size // 2, device=device)
    f = setup_filter([1, 3, 3, 1], device=device)
    xh = torch.randn(batch, half, size // 2, size // 2, device=device)
    w = torch.randn(top, half, 3, 3, device=device) / (half * 9) ** 0.5
    styles = torch.randn(batch, half, device=device)
    wsq = w.square().sum([2, 3])
    feats = [torch.randn(batch, c, r, r, device=device) for c, r in feature_shapes(size)]
    out_size, crop = config["out_size"], config["crop"]
    return [
        (f"bias_act lrelu [N,{top},{size},{size}]", lambda: bias_act(x, b, act="lrelu", clamp=256)),
        (f"upfirdn2d skip up [N,3,{size // 2},{size // 2}]",
         lambda: upfirdn2d(rgb, f, up=2, padding=(2, 1, 2, 1), gain=4)),
        (f"upfirdn2d blur [N,{top},{size},{size}]", lambda: upfirdn2d(x, f, padding=(1, 2, 1, 2))),
        (f"modulated_conv2d up {half}->{top} @{size}",
         lambda: modulated_conv2d(xh, w, styles, up=2, resample_filter=f, wsq=wsq, act="lrelu")),
        ("seg_head (bilinear)", lambda: seg_head(feats, members, out_size, crop=crop)),
    ]


def check_kernels(device, batch, dtype_name, reps, config, members, backends):
    """Rows (case, backend, rel err or None, ms) of every kernel case on the reference and each backend."""
    rows = []
    dtype = getattr(torch, dtype_name)
    with torch.no_grad():
        for name, fn in kernel_cases(device, batch, config, members):
            with backend.use_backend("reference"):
                ref = fn()
                ref_ms = cuda_time_ms(fn, reps)
            rows.append((name, "reference", None, ref_ms))
            for b in backends:
                with backend.use_backend(b, dtype=dtype):
                    got = fn()
                    ms = cuda_time_ms(fn, reps)
                rows.append((name, b, rel_error(got, ref), ms))
            del ref
            torch.cuda.empty_cache()
    return rows


def end_to_end(device, batch, dtype_name, reps, config, name):
    """Rows (stage, backend, rel err of the image against the reference or None, ms): `apply` (generator + seg
    head, then argmax) and one refinement step (EditGAN's loss on a region, backward, Adam)."""
    from editgan_fast.models.generator import Generator

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    gen = Generator(config["size"]).to(device).eval().requires_grad_(False)
    dim = sum(c for c, _ in feature_shapes(config["size"]))
    members = random_members(dim, config["classes"], config["members"], device)
    out_size, crop = config["out_size"], config["crop"]
    y0, y1, x0, x1 = crop or (0, out_size[0], 0, out_size[1])
    wplus = gen.mean_latent().expand(batch, gen.num_ws, -1).contiguous()
    delta = 0.1 * torch.randn_like(wplus)

    def apply():
        with torch.no_grad():
            image, features = gen.synthesis(wplus + delta, return_features=True)
            return image, seg_head(features, members, out_size, crop=crop).argmax(1)

    target = torch.randint(0, config["classes"], (batch, y1 - y0, x1 - x0), device=device)
    region = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool, device=device)
    region[(y1 - y0) // 4:(y1 - y0) // 2, (x1 - x0) // 4:(x1 - x0) * 3 // 4] = True
    target_in_region = target[:, region]
    latent = delta.clone().requires_grad_()
    opt = torch.optim.Adam([latent], lr=0.01)
    with torch.no_grad():
        image0 = gen.synthesis(wplus)
    keep = (~region).float()

    def refine_step():
        # EditGAN's loss: cross-entropy on the edited region (nearest-upsampled features) plus an image term
        # outside it (LPIPS in the editor; a masked L2 stand-in here, since no LPIPS weights are downloaded).
        opt.zero_grad(set_to_none=True)
        image, features = gen.synthesis(wplus + latent, return_features=True)
        logits = seg_head(features, members, out_size, crop=crop, mode="nearest", region=region)
        ce = torch.nn.functional.cross_entropy(logits, target_in_region)
        l2 = ((image - image0)[:, :, y0:y1, x0:x1] * keep).square().mean()
        (ce + l2).backward()
        opt.step()

    with backend.use_backend("reference"):
        ref_image = apply()[0]
    with backend.use_backend(name, dtype=dtype):
        err = rel_error(apply()[0], ref_image)
        rows = [(f"apply (generator + seg head), batch {batch}", name, err, cuda_time_ms(apply, reps)),
                (f"refinement step, batch {batch}", name, None, cuda_time_ms(refine_step, reps))]
        editor = Editor(gen, Segmenter(members, out_size, crop=crop), progress=False)
        rows += graph_rows(editor, Latent(wplus[0]), EditVector(delta[0].cpu()), batch, reps, name)
    return rows


def graph_rows(editor, latent, vector, batch, reps, name, timer=cuda_time_ms, graph_type=None):
    """Rows (stage, backend, rel err, ms) of `apply` through the Editor, eager and replayed from a CUDA graph:
    the same editor with graphs off, then on (the error is the replayed image's against the eager one). A
    capture that fails is a row with a NaN error (over every bound), so the other rows still get reported."""
    scales = {vector: [0.5 - k / max(batch - 1, 1) for k in range(batch)] if batch > 1 else 0.5}
    stage = f"apply, CUDA graph replay vs eager, batch {batch}"
    editor.use_cuda_graphs(False)
    eager = editor.apply(latent, scales)
    rows = [(f"apply (Editor, eager), batch {batch}", name, None, timer(lambda: editor.apply(latent, scales), reps))]
    try:
        editor.use_cuda_graphs(True, graph_type=graph_type)
        replayed = editor.apply(latent, scales)
        ms = timer(lambda: editor.apply(latent, scales), reps)
    except BackendUnavailable as e:
        return rows + [(f"{stage}: capture failed ({e})", name, float("nan"), float("nan"))]
    finally:
        editor.use_cuda_graphs(False)  # frees the graph's memory pool
    return rows + [(f"{stage} ({rows[0][3] / ms:.2f}x)", name, rel_error(replayed.image, eager.image), ms)]


def record_choice(path, kernel_rows, bound, what):
    """Rewrite the package's gpu_choice.json: per operator, the backend with the smallest summed time over its
    cases among those within the error bound on every case (the reference when none is)."""
    import datetime
    import json
    times, bad = {}, set()
    for name, b, err, ms in kernel_rows:
        op = name.split()[0]
        if b == "reference":
            continue
        times.setdefault(op, {}).setdefault(b, 0.0)
        times[op][b] += ms
        if err is None or not err <= bound:
            bad.add((op, b))
    ops = {op: min((t, b) for b, t in by.items() if (op, b) not in bad)[1]
           if any((op, b) not in bad for b in by) else "reference" for op, by in times.items()}
    with open(path) as f:
        table = json.load(f)
    table["ops"].update(ops)
    table["measured"] = f"{what}, {datetime.date.today().isoformat()}"
    with open(path, "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    return ops


class Report:
    """Prints each table and, given a path, appends it to a Markdown file as it is produced."""

    def __init__(self, path):
        self.path = path

    def write(self, text):
        print(text)
        if self.path:
            with open(self.path, "a") as f:
                f.write(text + "\n")

    def table(self, header, rows):
        self.write("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            self.write("| " + " | ".join(row) + " |")


def _report_tuning(report):
    """The modulated conv's tuning choices of this run (each made during a stage's warm-up, outside the timing)."""
    if not backend.available("triton"):
        return
    from editgan_fast.kernels.modulated_conv import TUNER
    chosen = TUNER.chosen()
    if chosen:
        report.table(("modulated conv shape class", "chosen configuration"),
                     [(f"`{key}`", f"`{config}`") for key, config in sorted(chosen.items(), key=str)])


def _err_cell(err, bound):
    if err is None:
        return "-"
    return f"{err:.2e} {'ok' if err <= bound else 'OVER ' + format(bound, '.0e')}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=tuple(BOUNDS), default="float32")
    parser.add_argument("--config", choices=tuple(CONFIGS), default="car")
    parser.add_argument("--markdown", help="append the tables to this Markdown file")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a backend is unavailable or an error exceeds its dtype's bound")
    parser.add_argument("--record", metavar="GPU_CHOICE_JSON",
                        help="write the faster backend per operator into this table (editgan_fast/ops/gpu_choice.json)")
    parser.add_argument("--roofline", action="store_true", help="print the predicted H200 numbers and exit")
    args = parser.parse_args(argv)
    if args.roofline:
        return print_roofline()
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; nothing to check or time (see docs/gpu-performance.md for "
              "the predicted numbers)")
        return 1 if args.check else 0
    # The reference is the oracle: full fp32 products (TF32 would put its own error near the fp32 bound).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    config, bound = CONFIGS[args.config], BOUNDS[args.dtype]
    report = Report(args.markdown)
    backends = [b for b in ("triton", "cuda") if backend.available(b)]
    missing = sorted({"triton", "cuda"} - set(backends))
    report.write(f"\n#### {args.config}, {args.dtype}, batch {args.batch}, median of {args.reps} "
                 f"({torch.cuda.get_device_name()}; error bound {bound:g}; unavailable: {missing or 'none'})")
    members = random_members(sum(c for c, _ in feature_shapes(config["size"])), config["classes"],
                             config["members"], device)
    kernel_rows = check_kernels(device, args.batch, args.dtype, args.reps, config, members, backends)
    ref_ms = {name: ms for name, b, _, ms in kernel_rows if b == "reference"}
    report.table(("kernel", "backend", "rel err", "ms", "x reference"),
                 [(name, b, _err_cell(err, bound), f"{ms:.3f}", f"{ref_ms[name] / ms:.2f}")
                  for name, b, err, ms in kernel_rows])
    if args.record:
        chosen = record_choice(args.record, kernel_rows, bound,
                               f"{torch.cuda.get_device_name()}, {args.config}, {args.dtype}")
        report.write(f"\n`auto` on CUDA now picks: {', '.join(f'{op} -> {b}' for op, b in sorted(chosen.items()))}")
    stage_rows = []
    for b in backends:
        stage_rows += end_to_end(device, args.batch, args.dtype, args.reps, config, b)
    report.table(("stage", "backend", "image rel err", "ms"),
                 [(stage, b, _err_cell(err, bound), f"{ms:.3f}") for stage, b, err, ms in stage_rows])
    _report_tuning(report)
    errors = [err for _, _, err, _ in kernel_rows + stage_rows if err is not None]
    over = [e for e in errors if not e <= bound]  # NaN counts as over
    if args.check and (over or missing):
        print(f"bench/gpu.py: FAILED: {len(over)} error(s) over {bound:g}, unavailable backends: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
