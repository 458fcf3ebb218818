"""IF-Net: shapes, chunked decoding, determinism, gradients, and the research preset's size."""

from __future__ import annotations

import pytest
import torch

from shapeqc.prior.ifnet import PRESETS, IFNet, ifnet_from_preset
from shapeqc.prior.reconstruction import OUTSIDE_LOGIT, grid_logits, voxel_centre_coords


def _inputs(grid_size=32, batch=2, points=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(batch, 1, grid_size, grid_size, grid_size, generator=generator) > 0.7).float()
    coords = torch.rand(batch, points, 3, generator=generator) * 2 - 1
    return grid, coords


@pytest.mark.parametrize("preset", ["tiny", "cpu_small"])
def test_output_shape(preset):
    net = ifnet_from_preset(preset).eval()
    grid, points = _inputs(PRESETS[preset]["grid_size"])
    assert net(grid, points).shape == (2, 300)


def test_research_preset_parameter_count_matches_hand_count():
    # conv_in 1*16*27+16, bn 2*16; per scale two 3^3 convs + bn; decoder on (1+16+32+64+128+128)*7 = 2583 features
    convs = (1 * 16 * 27 + 16) + 2 * 16
    for c_in, c_out in ((16, 32), (32, 64), (64, 128), (128, 128)):
        convs += (c_in * c_out * 27 + c_out) + (c_out * c_out * 27 + c_out) + 2 * c_out
    decoder = (2583 * 512 + 512) + (512 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
    assert convs + decoder == 3_277_921
    assert sum(p.numel() for p in ifnet_from_preset("research").parameters()) == 3_277_921


def test_chunked_decode_equals_one_shot():
    torch.manual_seed(0)
    net = ifnet_from_preset("tiny").eval()
    grid, _ = _inputs(32, batch=1)
    with torch.no_grad():
        features = net.encode(grid)
        coords = voxel_centre_coords((32, 32, 32))
        one_shot = net.decode(features, coords[None])[0].reshape(32, 32, 32)
        chunked = grid_logits(net, grid, margin=None, chunk_points=1000)[0, 0]
    torch.testing.assert_close(chunked, one_shot, rtol=1e-5, atol=1e-5)


def test_region_decoding_fills_outside_and_matches_inside():
    torch.manual_seed(0)
    net = ifnet_from_preset("tiny").eval()
    grid = torch.zeros(1, 1, 32, 32, 32)
    grid[0, 0, 10:20, 12:18, 8:22] = 1
    full = grid_logits(net, grid, margin=None)
    region = grid_logits(net, grid, margin=2)
    inside = (slice(8, 22), slice(10, 20), slice(6, 24))
    torch.testing.assert_close(region[0, 0][inside], full[0, 0][inside])
    assert region[0, 0, 0, 0, 0] == OUTSIDE_LOGIT


def test_cpu_determinism_with_a_seed():
    def run():
        torch.manual_seed(7)
        net = ifnet_from_preset("tiny")
        grid, points = _inputs(32)
        loss = net(grid, points).sigmoid().mean()
        loss.backward()
        return loss.detach(), net.fc_0.weight.grad.clone()

    (loss_a, grad_a), (loss_b, grad_b) = run(), run()
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(1)
    net = ifnet_from_preset("tiny")
    grid, points = _inputs(32)
    torch.nn.functional.binary_cross_entropy_with_logits(net(grid, points), torch.rand(2, 300)).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_points_are_read_in_array_axis_order():
    """A grid occupied only in the half axis0 < R/2 must be read there: the flip to grid_sample order is right."""
    net = IFNet(grid_size=16, channels=(2,), hidden=4)
    grid = torch.zeros(1, 1, 16, 16, 16)
    grid[0, 0, :8] = 1
    features = net.encode(grid)
    sampled = torch.nn.functional.grid_sample(
        features[0], torch.tensor([[[[[0.5, 0.0, -0.5]], [[-0.5, 0.0, 0.5]]]]]).flip(-1), align_corners=False)
    assert sampled.flatten().tolist() == [0.0, 1.0]  # axis0 = +0.5 is in the empty half, -0.5 in the occupied one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_cpu(dtype):
    net = ifnet_from_preset("tiny").eval()
    grid, points = _inputs(32)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is torch.bfloat16):
        out = net(grid, points)
    assert out.shape == (2, 300) and torch.isfinite(out.float()).all()


# research: the two coarsest maps projected; the 32^3 one too for a single grid, but not for two (640 MB cap)
@pytest.mark.parametrize("preset, projected", [("tiny", 0), ("cpu_small", 0), ("research", 2)])
def test_prepared_decoding_equals_plain_decoding(preset, projected):
    """Channels-last tables and first-layer projections of coarse maps change float rounding only."""
    torch.manual_seed(0)
    net = ifnet_from_preset(preset).eval()
    size = net.grid_size
    grid = (torch.rand(2, 1, size, size, size) > 0.7).float()  # a batch of two: table rows offset per item
    points = torch.rand(2, 3000, 3) * 2.2 - 1.1  # beyond [-1, 1] too: border padding must agree
    with torch.no_grad():
        features = net.encode(grid)
        prepared = net.prepare_decoding(features)
        plain, fast = net.decode(features, points), net.decode_prepared(prepared, points)
    assert sum(weight is None for _, _, weight in prepared.levels) == projected
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-5)


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (0, 1, 2)])
@pytest.mark.parametrize("preset", ["tiny", "cpu_small"])
def test_mirrored_weights_see_the_mirrored_world_exactly(preset, axes):
    """mirrored_state: the new network on a grid equals the old one on the grid flipped along ``axes`` at the
    mirrored points, to float rounding, through the plain and the prepared decoder (the adrenal 0.6.0 fix)."""
    from shapeqc.prior.ifnet import mirrored_state

    torch.manual_seed(3)
    old = ifnet_from_preset(preset)
    old.train()
    size = old.grid_size
    old(torch.rand(2, 1, size, size, size).round(), torch.rand(2, 16, 3) * 2 - 1)  # batch norm statistics
    old.eval()
    new = ifnet_from_preset(preset)
    new.load_state_dict(mirrored_state(old.state_dict(), axes))
    new.eval()
    grid = (torch.rand(2, 1, size, size, size) > 0.7).float()
    points = torch.rand(2, 600, 3) * 2 - 1
    mirrored = points.clone()
    mirrored[..., list(axes)] *= -1
    with torch.no_grad():
        expected = old(grid.flip([2 + a for a in axes]), mirrored)
        assert torch.allclose(new(grid, points), expected, atol=1e-5)
        prepared = new.prepare_decoding(new.encode(grid), min_channels=1)
        assert torch.allclose(new.decode_prepared(prepared, points), expected, atol=1e-5)
        assert not torch.allclose(old(grid, points), expected, atol=1e-3)  # the flip matters: a real test
    twice = mirrored_state(mirrored_state(old.state_dict(), axes), axes)
    assert all(torch.equal(twice[name], value) for name, value in old.state_dict().items())


def test_without_input_resolution_features_the_decoder_reads_pooled_scales_only():
    """The shape-prior variant: no map at the input's resolution reaches the decoder, so a one-voxel change of
    the input far from the point's pooled cells cannot be copied; its weights have the smaller first layer."""
    torch.manual_seed(2)
    net = IFNet(grid_size=32, channels=(4, 8, 8), hidden=16, input_resolution_features=False).eval()
    grid, points = _inputs(32)
    features = net.encode(grid)
    assert [f.shape[-1] for f in features] == [16, 8]
    assert net.fc_0.in_channels == (8 + 8) * 7
    with torch.no_grad():
        prepared = net.prepare_decoding(features, min_channels=1)
        torch.testing.assert_close(net.decode_prepared(prepared, points), net.decode(features, points),
                                   rtol=0, atol=2e-5)
    torch.nn.functional.binary_cross_entropy_with_logits(net(grid, points), torch.rand(2, 300)).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="pooled scale"):
        IFNet(grid_size=32, channels=(4,), hidden=16, input_resolution_features=False)
