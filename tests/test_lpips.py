"""LPIPS-VGG against an independent functional computation from the same weight files."""
import pytest
import torch
import torch.nn.functional as F

from editgan_fast.models.errors import CheckpointError
from editgan_fast.models.lpips import LPIPS
from seg_factories import VGG16_CONFIG, write_lpips_lin, write_vgg16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    return write_vgg16(d / "vgg16.pth", seed=0), write_lpips_lin(d / "vgg_lin.pth", seed=1)


@pytest.fixture(scope="module")
def model(files):
    return LPIPS.from_files(*files).double()


def vgg_block_outputs(sd, x):
    """The last ReLU of each of VGG16's five conv blocks, walking torchvision's `features` indices."""
    outs, index = [], 0
    for v in VGG16_CONFIG:
        if v == "M":
            outs.append(x)
            if len(outs) == 5:
                break
            x = F.max_pool2d(x, 2)
            index += 1
        else:
            x = F.relu(F.conv2d(x, sd[f"features.{index}.weight"].double(), sd[f"features.{index}.bias"].double(),
                                padding=1))
            index += 2
    return outs


def lpips_independent(files, x, y, mask=None):
    vgg = torch.load(files[0], weights_only=True)
    lin = torch.load(files[1], weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    fx, fy = (vgg_block_outputs(vgg, (t - shift) / scale) for t in (x, y))
    total = 0
    for k, (a, b) in enumerate(zip(fx, fy)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        d = torch.einsum("nchw,c->nhw", (a - b) ** 2, lin[f"lin{k}.model.1.weight"].double().flatten())
        if mask is None:
            total = total + d.mean((1, 2))
        else:
            m = F.avg_pool2d(mask, 2 ** k) if k else mask  # each block halves the resolution
            total = total + (d * m).sum((1, 2)) / m.sum((1, 2))
    return total


def images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1)


def test_matches_independent_computation(files, model):
    x, y = images(2, 16, 0), images(2, 16, 1)
    got = model(x, y)
    assert got.shape == (2,) and (got > 0).all()
    torch.testing.assert_close(got, lpips_independent(files, x, y), rtol=1e-9, atol=1e-12)
    # float32 (the default) agrees to float32 rounding.
    torch.testing.assert_close(LPIPS.from_files(*files)(x.float(), y.float()).double(), got, rtol=1e-4, atol=1e-6)


def test_identical_images_give_zero(model):
    x = images(2, 16, 3)
    assert torch.equal(model(x, x.clone()), torch.zeros(2, dtype=torch.float64))


def test_mask_weights_the_spatial_mean(files, model):
    x, y = images(2, 16, 4), images(2, 16, 5)
    mask = torch.zeros(2, 16, 16, dtype=torch.float64)
    mask[0, 2:10, 4:15] = 1
    mask[1, 8:, :] = 1
    got = model(x, y, mask=mask)
    torch.testing.assert_close(got, lpips_independent(files, x, y, mask), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model(x, y, mask=torch.ones(16, 16, dtype=torch.bool)), model(x, y),
                               rtol=1e-12, atol=1e-14)
    # A partial mask really reweights: the result differs from the unmasked one.
    assert not torch.allclose(got, model(x, y))


def test_gradients_flow_to_the_input(model):
    y = images(1, 16, 6)
    x0 = images(1, 16, 7)
    # gradcheck through a 4x4 perturbation upsampled onto the 16x16 image; fast mode checks random
    # Jacobian projections (float64 VGG convs are slow on CPU).
    t = (0.1 * torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8)))
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: model(x0 + F.interpolate(t, scale_factor=4.0), y), (t,),
                                    eps=1e-6, atol=1e-6, fast_mode=True)
    x = x0.clone().requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and (x.grad != 0).float().mean() > 0.9
    assert all(not p.requires_grad for p in model.parameters())


def test_missing_file_and_keys(tmp_path, files):
    with pytest.raises(CheckpointError, match=r"absent\.pth does not exist"):
        LPIPS.from_files(tmp_path / "absent.pth", files[1])
    sd = torch.load(files[0], weights_only=True)
    del sd["features.28.weight"]
    torch.save(sd, tmp_path / "vgg_missing.pth")
    with pytest.raises(CheckpointError, match=r"vgg_missing\.pth lacks keys \['features\.28\.weight'\]"):
        LPIPS.from_files(tmp_path / "vgg_missing.pth", files[1])
    # AlexNet's lin weights (channels 64, 192, ...) are not VGG's.
    alex = write_lpips_lin(tmp_path / "alex.pth", seed=0, channels=(64, 192, 384, 256, 256))
    with pytest.raises(CheckpointError, match=r"lin1\.model\.1\.weight has shape \(1, 192, 1, 1\)"):
        LPIPS.from_files(files[0], alex)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        LPIPS.from_files(files[0], tmp_path / "text.pth")


def test_bad_input_shapes(model):
    with pytest.raises(ValueError, match="one shape"):
        model(images(1, 32, 0), images(1, 16, 0))
    with pytest.raises(ValueError, match="at least 16x16"):
        model(images(1, 8, 0), images(1, 8, 0))
    with pytest.raises(ValueError, match="mask must be"):
        model(images(1, 16, 0), images(1, 16, 1), mask=torch.ones(8, 8))
