"""Generator: loads rosinality and StyleGAN2-ADA files and matches an independent rosinality forward."""
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import editgan_fast
from editgan_fast.models.errors import CheckpointError
from editgan_fast.models.loaders import load_generator
from factories import make_ada_pickle, make_rosinality_checkpoint, small_generator


# ---- an independent, naive rosinality forward over the raw state dict (per-sample weights, zero insertion) ----
def _blur_up(x, taps, up, pad0, pad1, gain):
    """rosinality's upfirdn2d: zero insertion (h*up samples), pad, true 2-D convolution with the kernel."""
    k = torch.tensor(taps, dtype=x.dtype)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum() * gain
    n, c, h, w = x.shape
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [pad0, pad1, pad0, pad1])
    y = F.conv2d(z.reshape(n * c, 1, *z.shape[2:]), k2.flip([0, 1])[None, None])
    return y.reshape(n, c, *y.shape[2:])


def _modconv(sd, prefix, x, w, demod, up):
    weight = sd[f"{prefix}.weight"][0]
    cout, cin, k, _ = weight.shape
    out = []
    for n in range(x.shape[0]):
        s = w[n] @ (sd[f"{prefix}.modulation.weight"].T / math.sqrt(w.shape[1])) + sd[f"{prefix}.modulation.bias"]
        wt = weight / math.sqrt(cin * k * k) * s[None, :, None, None]
        if demod:
            wt = wt / torch.sqrt((wt ** 2).sum([1, 2, 3], keepdim=True) + 1e-8)
        if up:
            y = F.conv_transpose2d(x[n:n + 1], wt.transpose(0, 1), stride=2)
            y = _blur_up(y, [1, 3, 3, 1], 1, 1, 1, gain=4)  # rosinality: Blur(kernel * factor^2)
        else:
            y = F.conv2d(x[n:n + 1], wt, padding=k // 2)
        out.append(y)
    return torch.cat(out)


def naive_forward(sd, wplus):
    sd = {k: v.double() for k, v in sd.items()}
    wplus = wplus.double()
    lrelu = lambda v, b: F.leaky_relu(v + b.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)

    def styled(prefix, x, w, noise, up):
        y = _modconv(sd, prefix + ".conv", x, w, True, up)
        y = y + sd[prefix + ".noise.weight"] * noise
        return lrelu(y, sd[prefix + ".activate.bias"])

    def rgb(prefix, x, w, skip):
        y = _modconv(sd, prefix + ".conv", x, w, False, False) + sd[prefix + ".bias"]
        if skip is not None:
            y = y + _blur_up(skip, [1, 3, 3, 1], 2, 2, 1, gain=4)
        return y

    n = wplus.shape[0]
    x = sd["input.input"].expand(n, -1, -1, -1)
    feats = [x]
    x = styled("conv1", x, wplus[:, 0], sd["noises.noise_0"], False)
    feats.append(x)
    img = rgb("to_rgb1", x, wplus[:, 1], None)
    b = 0
    while f"to_rgbs.{b}.bias" in sd:
        x = styled(f"convs.{2 * b}", x, wplus[:, 2 * b + 1], sd[f"noises.noise_{2 * b + 1}"], True)
        feats.append(x)
        x = styled(f"convs.{2 * b + 1}", x, wplus[:, 2 * b + 2], sd[f"noises.noise_{2 * b + 2}"], False)
        feats.append(x)
        img = rgb(f"to_rgbs.{b}", x, wplus[:, 2 * b + 3], img)
        b += 1
    return img, feats


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "g.pt"
    g = make_rosinality_checkpoint(path, size=32)
    return path, g


def test_rosinality_checkpoint_matches_independent_forward(ckpt):
    path, _ = ckpt
    g = load_generator(path)
    sd = torch.load(path, weights_only=True)["g_ema"]
    wplus = torch.randn(3, g.num_ws, g.style_dim)
    want_img, want_feats = naive_forward(sd, wplus)
    with editgan_fast.use_backend("reference"):
        img, feats = g.synthesis(wplus, return_features=True)
        img64, feats64 = g.double().synthesis(wplus.double(), return_features=True)
    assert img.shape == (3, 3, 32, 32) and len(feats) == 2 + 2 * (5 - 2)
    assert [f.shape[1] for f in feats] == g.feature_channels
    assert _rel(img, want_img) < 1e-5
    assert _rel(img64, want_img) < 1e-12
    for f, want in zip(feats, want_feats):
        assert _rel(f, want) < 1e-5
    for f, want in zip(feats64, want_feats):
        assert _rel(f, want) < 1e-12


def test_checkpoint_keeps_latent_avg_and_freezes_weights(ckpt):
    path, _ = ckpt
    g = load_generator(path)
    torch.testing.assert_close(g.mean_latent()[0], torch.load(path, weights_only=True)["latent_avg"])
    assert not any(p.requires_grad for p in g.parameters())
    w = torch.randn(2, g.style_dim)
    torch.testing.assert_close(g.truncate(w, 0.0), g.mean_latent().expand(2, -1))
    torch.testing.assert_close(g.truncate(w, 1.0), w)


def test_ada_pickle_loads_without_running_its_source(tmp_path):
    g = small_generator(size=32, conv_clamp=1.5, seed=3)
    path = tmp_path / "network-snapshot.pkl"
    make_ada_pickle(path, g)
    with pytest.raises(Exception):  # the ordinary unpickler would import/execute the embedded code
        pickle.load(open(path, "rb"))
    loaded = load_generator(path)
    assert loaded.conv_clamp == 1.5
    wplus = torch.randn(2, g.num_ws, g.style_dim)
    with editgan_fast.use_backend("reference"):
        assert _rel(loaded.synthesis(wplus), g.synthesis(wplus)) < 1e-5
    torch.testing.assert_close(loaded.mean_latent(), g.mean_latent())


def test_noise_modes(ckpt):
    g = load_generator(ckpt[0])
    wplus = torch.randn(1, g.num_ws, g.style_dim)
    with editgan_fast.use_backend("reference"):
        const1, const2 = g.synthesis(wplus), g.synthesis(wplus)
        rand1, rand2 = g.synthesis(wplus, noise_mode="random"), g.synthesis(wplus, noise_mode="random")
        none = g.synthesis(wplus, noise_mode="none")
        with torch.no_grad():
            for m in list(g.convs) + [g.conv1]:
                m.noise.weight.zero_()
        zero_strength = g.synthesis(wplus)
    torch.testing.assert_close(const1, const2)
    assert not torch.allclose(rand1, rand2) and not torch.allclose(const1, none)
    torch.testing.assert_close(none, zero_strength)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(wplus, noise_mode="fresh")


def test_styles_are_affine_in_wplus(ckpt):
    g = load_generator(ckpt[0]).double()
    w, d = torch.randn(2, g.num_ws, g.style_dim, dtype=torch.float64), torch.randn(2, g.num_ws, g.style_dim,
                                                                                  dtype=torch.float64)
    for a, b, c in zip(g.styles(w + 0.7 * d), g.styles(w), g.styles(d, bias=False)):
        torch.testing.assert_close(a, b + 0.7 * c)


def test_gradient_reaches_the_latent_only(ckpt):
    g = load_generator(ckpt[0]).double()
    base = torch.randn(1, g.num_ws, g.style_dim, dtype=torch.float64)
    basis = torch.randn(3, g.num_ws, g.style_dim, dtype=torch.float64)  # gradcheck a 3-D slice of w+ (speed)
    probe = torch.randn(4, 3, g.resolution, g.resolution, dtype=torch.float64)  # 4 random projections
    t = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with editgan_fast.use_backend("reference"):
        assert torch.autograd.gradcheck(
            lambda t: torch.einsum("nchw,kchw->k", g.synthesis(base + torch.einsum("k,kws->ws", t, basis)), probe),
            (t,), eps=1e-6, atol=1e-6)


def test_bad_inputs_are_clear_errors(ckpt, tmp_path):
    g = load_generator(ckpt[0])
    with pytest.raises(ValueError, match=r"w\+ must be \[N, 8, 16\]"):
        g.synthesis(torch.randn(1, 7, g.style_dim))
    with pytest.raises(TypeError, match="floating point"):
        g.synthesis(torch.zeros(1, g.num_ws, g.style_dim, dtype=torch.int64))
    with pytest.raises(ValueError, match="is on meta"):
        g.synthesis(torch.randn(1, g.num_ws, g.style_dim, device="meta"))
    with pytest.raises(ValueError, match=r"z must be \[N, 16\]"):
        g.mapping(torch.randn(2, 3))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_generator(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="expected a rosinality"):
        load_generator(foreign)
    sd = torch.load(ckpt[0], weights_only=True)["g_ema"]
    broken = tmp_path / "missing.pt"
    torch.save({"g_ema": {k: v for k, v in sd.items() if k != "convs.1.activate.bias"}}, broken)
    with pytest.raises(CheckpointError, match=r"missing \['convs.1.activate.bias'\]"):
        load_generator(broken)
    extra = tmp_path / "extra.pt"
    torch.save({"g_ema": dict(sd, stray=torch.zeros(2))}, extra)
    with pytest.raises(CheckpointError, match=r"unexpected \['stray'\]"):
        load_generator(extra)
    other_pickle = tmp_path / "other.pkl"
    other_pickle.write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="G_ema"):
        load_generator(other_pickle)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "nope.pt")
