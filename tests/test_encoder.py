"""EditGAN's FPN encoder: checkpoint layout, inferred widths, and the forward pass against a functional one."""
import pytest
import torch
import torch.nn.functional as F

from editgan_fast.models.encoder import EncoderArch, FPNEncoder, arch_from_state_dict, load_encoder
from editgan_fast.models.errors import CheckpointError
from seg_factories import StubGenerator, editgan_encoder_shapes, write_encoder

# A reduced encoder (same layout, tiny widths) for a 64 px generator with 10 w+ entries of 16 dimensions.
SMALL = dict(num_ws=10, stem=4, planes=(2, 4, 8, 16), blocks=(1, 1, 2, 1), expansion=4, feature_dim=8,
             style_dim=16, head_convs=(2, 3, 4))


def small_generator(num_ws=10):
    g = StubGenerator(resolution=64, feature_channels=(4,) * 10, style_dim=16)
    g.num_ws = num_ws
    return g


def test_editgan_layout_at_full_size():
    """EditGAN's car encoder (ResNet-50, 16 w+ entries): our module has exactly its keys and shapes."""
    want = editgan_encoder_shapes(num_ws=16)
    with torch.device("meta"):  # ~240M parameters: shapes only
        enc = FPNEncoder(EncoderArch(heads=(3, 4, 9)))
    got = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert got == want
    assert arch_from_state_dict(enc.state_dict()) == EncoderArch(heads=(3, 4, 9))


def functional_encoder(sd, x):
    """EditGAN's FPNEncoder.forward written out with torch.nn.functional on the raw state dict."""
    def conv(x, p, stride=1, padding=0):
        return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), stride, padding)

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], training=False, eps=1e-5)

    def block(x, p, stride):
        out = F.relu(bn(conv(x, p + ".conv1"), p + ".bn1"))
        out = F.relu(bn(conv(out, p + ".conv2", stride, 1), p + ".bn2"))
        out = bn(conv(out, p + ".conv3"), p + ".bn3")
        short = bn(conv(x, p + ".shortcut.0", stride), p + ".shortcut.1") if p + ".shortcut.0.weight" in sd else x
        return F.relu(out + short)

    c = F.max_pool2d(F.relu(bn(conv(x, "FPN_module.conv1", 2, 3), "FPN_module.bn1")), 3, 2, 1)
    cs = []
    for k, count in enumerate(SMALL["blocks"]):
        for j in range(count):
            c = block(c, f"FPN_module.layer{k + 1}.{j}", 2 if k > 0 and j == 0 else 1)
        cs.append(c)
    up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False) + b
    p4 = up(conv(cs[3], "FPN_module.toplayer"), conv(cs[2], "FPN_module.latlayer1"))
    p3 = up(p4, conv(cs[1], "FPN_module.latlayer2"))
    p2 = up(p3, conv(cs[0], "FPN_module.latlayer3"))
    maps = {"course_styles": conv(p4, "FPN_module.smooth1", 1, 1), "medium_styles": conv(p3, "FPN_module.smooth2", 1, 1),
            "fine_styles": conv(p2, "FPN_module.smooth3", 1, 1)}
    styles = []
    for (group, count), n_convs in zip((("course_styles", 3), ("medium_styles", 4), ("fine_styles", 3)),
                                       SMALL["head_convs"]):
        for h in range(count):
            y = maps[group]
            for i in range(n_convs):
                y = F.leaky_relu(conv(y, f"{group}.{h}.convs.{2 * i}", 2, 1), 0.01)
            styles.append(F.linear(y.view(x.shape[0], -1), sd[f"{group}.{h}.linear.weight"],
                                   sd[f"{group}.{h}.linear.bias"]))
    return torch.stack(styles, 1)


def test_loads_strictly_and_encodes(tmp_path):
    path = write_encoder(tmp_path / "enc.pth", seed=0, **SMALL)
    enc = load_encoder(path, small_generator())
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    assert enc.arch == EncoderArch(stem=4, planes=(2, 4, 8, 16), blocks=(1, 1, 2, 1), feature_dim=8, style_dim=16,
                                   heads=(3, 4, 3), head_convs=(2, 3, 4))
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    enc = enc.double()
    w = enc(image)
    assert w.shape == (2, 10, 16)
    sd = {k: v.double() if v.is_floating_point() else v
          for k, v in torch.load(path, weights_only=True)["model_state_dict"].items()}
    torch.testing.assert_close(w, functional_encoder(sd, image), rtol=1e-10, atol=1e-10)
    assert w.std(dim=1).min() > 0  # every w+ entry has its own head
    torch.testing.assert_close(enc(image[1:]), w[1:], rtol=1e-10, atol=1e-10)  # images do not mix


def test_mismatched_num_ws_and_style_dim(tmp_path):
    from factories import small_generator as real_generator
    path = write_encoder(tmp_path / "enc.pth", seed=0, **SMALL)
    g = real_generator(size=32, style_dim=16)  # 8 w+ entries
    with pytest.raises(CheckpointError, match=r"enc\.pth predicts 10 w\+ entries.*num_ws = 8"):
        load_encoder(path, g)
    with pytest.raises(CheckpointError, match=r"enc\.pth predicts 10 w\+ entries.*num_ws = 12"):
        load_encoder(path, small_generator(num_ws=12))
    g = small_generator()
    g.style_dim = 512
    with pytest.raises(CheckpointError, match=r"16-d styles.*512 dimensions"):
        load_encoder(path, g)


def test_missing_keys_and_bad_files(tmp_path):
    path = write_encoder(tmp_path / "enc.pth", seed=0, **SMALL)
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    del sd["FPN_module.layer2.0.bn2.running_var"]
    torch.save({"model_state_dict": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth does not match.*layer2\.0\.bn2\.running_var"):
        load_encoder(tmp_path / "partial.pth", small_generator())
    del sd["FPN_module.toplayer.weight"]
    torch.save({"model_state_dict": sd}, tmp_path / "notfpn.pth")
    with pytest.raises(CheckpointError, match=r"notfpn\.pth is not an EditGAN FPN encoder.*toplayer"):
        load_encoder(tmp_path / "notfpn.pth", small_generator())
    (tmp_path / "text.pth").write_text("no")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_encoder(tmp_path / "text.pth", small_generator())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "absent.pth", small_generator())


def test_bad_images(tmp_path):
    enc = load_encoder(write_encoder(tmp_path / "enc.pth", seed=0, **SMALL), small_generator())
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        enc(torch.rand(1, 1, 64, 64))
    # The reduced heads reach 1x1 from a 64 px image only; EditGAN would silently mix pixels into the batch.
    with pytest.raises(ValueError, match="too large"):
        enc(torch.rand(1, 3, 128, 128))
