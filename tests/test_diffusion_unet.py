import math

import pytest
import torch

import torch.nn.functional as F

from facerig.diffusion.unet import (
    AttentionBlock, DiffusionRigUNet, FastDropout, GroupNorm32, ResBlock, timestep_embedding,
)
from helpers import assert_close


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_unet(**kw) -> DiffusionRigUNet:
    args = dict(in_channels=12, out_channels=3, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                attention_ds=(2,), dropout=0.0, num_heads=1, num_head_channels=-1, latent_dim=64)
    args.update(kw)
    return DiffusionRigUNet(**args)


def _randomize_zero_layers(model: torch.nn.Module) -> None:
    """ADM zero-initializes every residual branch's last layer; undo that so outputs depend on inputs."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 10.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_forward_shapes_and_zero_init_output():
    torch.manual_seed(0)
    net = _tiny_unet()
    x, buf, z = torch.randn(2, 3, 32, 32), torch.rand(2, 9, 32, 32), torch.randn(2, 64)
    out = net(x, torch.tensor([0, 999]), buf, z)
    assert out.shape == (2, 3, 32, 32)
    # The output conv starts at zero (ADM init), so an untrained denoiser predicts no noise.
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()  # gradients still reach the output layer
    assert net.out[-1].weight.grad.abs().sum() > 0


def test_output_depends_on_every_input():
    torch.manual_seed(0)
    net = _tiny_unet()
    _randomize_zero_layers(net)
    x, buf, z, t = torch.randn(1, 3, 32, 32), torch.rand(1, 9, 32, 32), torch.randn(1, 64), torch.tensor([500])
    ref = net(x, t, buf, z)
    for changed in (net(x, t + 100, buf, z), net(x, t, buf * 0.5, z), net(x, t, buf, z + 1.0), net(x * 0.5, t, buf, z)):
        assert (changed - ref).abs().max() > 1e-4
    # A scalar t is broadcast over the batch.
    assert_close(net(x, torch.tensor(500), buf, z), ref)


def test_resblock_applies_time_then_latent_film():
    torch.manual_seed(0)
    blk = ResBlock(32, 16, 8, dropout=0.0)
    _randomize_zero_layers(blk)
    x, emb, z = torch.randn(2, 32, 8, 8), torch.randn(2, 16), torch.randn(2, 8)
    st, bt = blk.emb_layers(emb)[..., None, None].chunk(2, dim=1)
    sz, bz = blk.cond_emb_layers(z)[..., None, None].chunk(2, dim=1)
    h = blk.out_layers[0](blk.in_layers(x))
    h = (h * (1 + st) + bt) * (1 + sz) + bz
    assert_close(blk(x, emb, z), x + blk.out_layers[1:](h), atol=1e-5)


@pytest.mark.parametrize("up,down,size", [(True, False, 16), (False, True, 4)])
def test_resblock_resamples(up, down, size):
    blk = ResBlock(32, 16, 8, dropout=0.0, out_channels=32, up=up, down=down)
    assert blk(torch.randn(1, 32, 8, 8), torch.randn(1, 16), torch.randn(1, 8)).shape == (1, 32, size, size)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_matches_guided_diffusion_legacy_qkv(heads):
    torch.manual_seed(0)
    blk = AttentionBlock(64, num_heads=heads)
    torch.nn.init.normal_(blk.proj_out.weight, std=0.1)
    x = torch.randn(2, 64, 4, 4)
    # guided-diffusion's QKVAttentionLegacy, written out with einsum.
    b, c = 2, 64
    qkv = blk.qkv(blk.norm(x.reshape(b, c, -1)))
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, ch * 3, 16).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, 16)
    expected = (x.reshape(b, c, -1) + blk.proj_out(a)).reshape(b, c, 4, 4)
    assert_close(blk(x), expected, atol=1e-5)


def test_attention_rejects_bad_head_channels():
    with pytest.raises(ValueError, match="divisible"):
        AttentionBlock(64, num_head_channels=48)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_norm_film_silu_matches_its_definition_with_gradients(channels_last):
    from facerig.diffusion.unet import _NormFiLMSiLU

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 5, 5, dtype=torch.float64, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = [x.requires_grad_()] + [torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_()
                                   for s in ((64,), (64,), (2, 64), (2, 64))]
    fused = lambda *a: _NormFiLMSiLU.apply(*a, 32, 1e-5)  # noqa: E731
    w, b, scale, shift = args[1:]
    ref = F.silu(F.group_norm(x, 32, w, b, 1e-5) * scale[..., None, None] + shift[..., None, None])
    out = fused(*args)
    assert_close(out, ref, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last  # stays in the input's layout
    assert torch.autograd.gradcheck(fused, tuple(args))


def test_fused_norm_accepts_a_batch_of_one_with_any_batch_stride():
    from facerig.diffusion.unet import norm_film_silu

    norm = GroupNorm32(64)
    # What cat can return for a batch of one: channels_last strides with an arbitrary batch stride.
    x = torch.randn(1, 64, 4, 4).contiguous(memory_format=torch.channels_last).as_strided((1, 64, 4, 4), (64, 1, 256, 64))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.stride(0) != x[0].numel()
    assert_close(norm_film_silu(norm, x), F.silu(norm(x)), atol=1e-5)


def test_fast_dropout_is_inverted_dropout():
    drop = FastDropout(0.1)
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003
    assert torch.all(y[kept] == 1 / 0.9) and abs(y.mean().item() - 1) < 0.01
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())  # the gradient is masked and scaled the same way
    assert not torch.equal(kept, drop(x) != 0)  # a fresh mask each call
    drop.eval()
    assert drop(x) is x


def test_fused_norm_inference_path_equals_the_autograd_path():
    from facerig.diffusion.unet import norm_film_silu

    norm = GroupNorm32(64)
    torch.nn.init.normal_(norm.weight)
    x, scale, shift = torch.randn(2, 64, 6, 6), torch.randn(2, 64), torch.randn(2, 64)
    with_grad = norm_film_silu(norm, x, scale, shift)
    with torch.no_grad():
        assert_close(norm_film_silu(norm, x, scale, shift), with_grad.detach(), atol=1e-6)


@pytest.mark.parametrize("size", [4, 16, 32])
def test_fused_norm_on_channels_last_bf16_maps_matches_channels_first(size):
    # Maps of at most 16x16 take their statistics from a channels-first copy; larger ones GroupNorm's own kernel.
    from facerig.diffusion.unet import _NormFiLMSiLU

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, size, size, generator=g).mul(2).add(0.5)
    w, b = torch.randn(96, generator=g), torch.randn(96, generator=g)
    scale, shift = torch.randn(3, 96, generator=g), torch.randn(3, 96, generator=g)
    reference = F.silu(F.group_norm(x, 32, w, b, 1e-5) * scale[..., None, None] + shift[..., None, None])
    x_cl = x.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = _NormFiLMSiLU.apply(x_cl, w, b, scale, shift, 32, 1e-5)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out.float(), reference, atol=0.05, rtol=0.02)
    out.float().pow(2).sum().backward()
    x_ref = x.bfloat16().requires_grad_()
    _NormFiLMSiLU.apply(x_ref, w, b, scale, shift, 32, 1e-5).float().pow(2).sum().backward()
    assert x_cl.grad.is_contiguous(memory_format=torch.channels_last)
    rel = (x_cl.grad.float() - x_ref.grad.float()).norm() / x_ref.grad.float().norm()
    assert rel < 0.02


def test_fast_dropout_keeps_the_channels_last_layout():
    # A mask in another layout than the activation would turn output and gradient channels-first.
    drop = FastDropout(0.5)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = drop(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    kept = y != 0
    assert_close(y[kept], x[kept] * 2)
    y.backward(torch.ones_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.grad != 0, kept)
