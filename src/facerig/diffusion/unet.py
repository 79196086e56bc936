"""DiffusionRig's denoiser: the ADM UNet of guided-diffusion with a second, global-latent conditioning.

Conventions (as in the official DiffusionRig code, whose state-dict keys these modules reproduce 1:1):

- input: the noisy image ``x_t`` (3 channels, images live in [-1,1]) concatenated with the 9 physical buffer
  channels in ``facerig.render.renderer.BUFFER_NAMES`` order (rendered, normal, albedo; unscaled: rendered and albedo
  in [0,1], normals in [-1,1]), so 12 input channels; output: the predicted noise epsilon (3 channels).
- ``t`` are integer diffusion steps in [0, 1000) fed to the sinusoidal embedding unscaled (cos half first).
- every ResBlock applies, after its second GroupNorm, the time embedding's scale/shift and then the global
  latent's scale/shift (``h * (1 + s) + b`` twice: FiLM, "scale-shift norm").
- up/down-sampling is done inside ResBlocks (``resblock_updown``); attention is single-scale "legacy order"
  QKV attention (heads split before q/k/v), computed with ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32 (bf16/fp16 statistics are too coarse)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class _NormFiLMSiLU(torch.autograd.Function):
    """``silu(group_norm(x) * (a * weight) + (a * bias + c))`` in one op, for any dtype and memory format.

    Eager PyTorch runs GroupNorm, two FiLMs and SiLU as five passes over the activation, and bf16 GroupNorm's
    backward on channels_last tensors takes a slow path (10x its contiguous time on CPU), while converting
    layouts costs as much. So the affine and both FiLMs collapse into one per-(sample, channel)
    multiply-add, everything stays in the input's layout, and the GroupNorm backward is written out: its two
    group reductions are the per-channel sums the FiLM gradients need anyway, which leaves two
    multiply-adds over the activation.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups: int, eps: float):
        xhat, rstd = _group_normalize(x, groups, eps)
        a = weight * scale
        z = torch.addcmul((bias * scale + shift).to(x.dtype)[..., None, None], xhat, a.to(x.dtype)[..., None, None])
        ctx.save_for_backward(xhat, z, rstd, weight, bias, scale, a)
        ctx.groups = groups
        return F.silu(z)

    @staticmethod
    def backward(ctx, grad):
        xhat, z, rstd, weight, bias, scale, a = ctx.saved_tensors
        b, c = xhat.shape[:2]
        g = ctx.groups
        gz = torch.ops.aten.silu_backward(grad, z)
        # Reductions accumulate in float32 internally; asking for a float32 result would first copy gz.
        g_a = (gz * xhat).sum((2, 3)).float()  # d loss / d a, per sample and channel
        g_c = gz.sum((2, 3)).float()
        # GroupNorm backward: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over each group,
        # with dxhat = gz * a, so both means are group sums of a * g_c and a * g_a.
        n = xhat.numel() // (b * g)
        rstd = rstd.float().view(b, g, 1)
        m1 = (a * g_c).view(b, g, c // g).sum(2, keepdim=True) / n
        m2 = (a * g_a).view(b, g, c // g).sum(2, keepdim=True) / n
        per_channel = lambda t: t.expand(b, g, c // g).reshape(b, c, 1, 1).to(xhat.dtype)  # noqa: E731
        gx = torch.addcmul(per_channel(-rstd * m1), xhat, per_channel(-rstd * m2))
        gx.addcmul_(gz, per_channel(rstd * a.view(b, g, c // g)))
        return (gx, (g_a * scale).sum(0).to(weight.dtype), (g_c * scale).sum(0).to(bias.dtype),
                (g_a * weight + g_c * bias).to(scale.dtype), g_c.to(scale.dtype), None, None)


def _group_normalize(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm without affine: the normalised ``x`` in its dtype and layout, and rstd (B, groups).

    On CPU, channels_last maps of at most 16x16 take a slow GroupNorm kernel (0.82 ms for bf16 8x96x16x16,
    against 0.07 ms for a copy to channels-first plus the channels-first kernel), so there the statistics
    come from a channels-first copy (float32 at least) and the normalisation is one multiply-add in ``x``'s
    layout.
    """
    b, c = x.shape[:2]
    hw = x.numel() // (b * c)
    x = _canonical_batch_stride(x)
    if x.device.type != "cpu" or hw > 256 or x.is_contiguous() or x.dim() != 4:
        xhat, _, rstd = torch.native_group_norm(x, None, None, b, c, hw, groups, eps)
        return xhat, rstd
    stats_input = x.to(torch.promote_types(x.dtype, torch.float32), memory_format=torch.contiguous_format)
    _, mean, rstd = torch.native_group_norm(stats_input, None, None, b, c, hw, groups, eps)
    per_channel = lambda t: t.repeat_interleave(c // groups, 1).to(x.dtype)[..., None, None]  # noqa: E731
    return torch.addcmul(per_channel(-mean * rstd), x, per_channel(rstd)), rstd


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill its storage span exactly once (some permutation of a contiguous tensor)."""
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def _canonical_batch_stride(x: torch.Tensor) -> torch.Tensor:
    """A batch of one may carry any batch stride (e.g. from cat), which GroupNorm's layout check refuses."""
    if x.shape[0] == 1 and x.stride(0) != x[0].numel():
        return x.as_strided(x.shape, (x[0].numel(), *x.stride()[1:]))
    return x


def norm_film_silu(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(norm(x) * scale + shift)`` for (B,C,H,W) ``x`` and (B,C) ``scale``/``shift`` (FiLM), fused."""
    if scale is None:
        scale = torch.ones(x.shape[:2], dtype=norm.weight.dtype, device=x.device)
        shift = torch.zeros_like(scale)
    if torch.is_grad_enabled():
        return _NormFiLMSiLU.apply(x, norm.weight, norm.bias, scale, shift, norm.num_groups, norm.eps)
    # Inference: nothing to keep for a backward pass, so one buffer is normalised, modulated and activated
    # in place (two passes and two allocations fewer).
    h = _group_normalize(x, norm.num_groups, norm.eps)[0]
    shift = (norm.bias * scale + shift).to(x.dtype)[..., None, None]
    return F.silu(torch.addcmul(shift, h, (norm.weight * scale).to(x.dtype)[..., None, None], out=h), inplace=True)


class _MaskDropout(torch.autograd.Function):
    """Inverted dropout whose keep-mask comes from 16-bit slices of 64-bit random words.

    ``bernoulli_`` draws one 32-bit number per element through a slow path on CPU (17 ms for 3 M bf16
    elements here); four 16-bit slices per 64-bit draw cost a fifth of that. The drop probability is
    quantised to 1/65536.
    """

    @staticmethod
    def forward(ctx, x, p: float):
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
        keep = bits.view(torch.int16)[:n] >= round(-32768 + p * 65536)
        # The draws are i.i.d., so the mask takes x's strides as they are: a mask in another layout than x
        # (channels_last) would turn the output and the gradient into that layout, with copies at every conv.
        keep = keep.as_strided(x.shape, x.stride()) if _dense(x) else keep.view(x.shape)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheap keep-mask of ``_MaskDropout`` (same expectation, same scaling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        return _MaskDropout.apply(x, self.p)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity (ADM's init)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B,dim) sinusoidal embedding, ``[cos | sin]`` as in guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """Residual block with time-embedding and global-latent FiLM; optionally halves or doubles resolution."""

    def __init__(self, channels: int, emb_channels: int, latent_dim: int, dropout: float,
                 out_channels: int | None = None, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up and down:
            raise ValueError("ResBlock: up and down are exclusive")
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), FastDropout(p=dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        h = norm_film_silu(self.in_layers[0], x)
        if self.up or self.down:
            # Resample between the activation and the conv, and resample the skip path the same way.
            h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        # Time FiLM then latent FiLM, h * (1 + s_t) + b_t then * (1 + s_z) + b_z, as one scale and shift.
        scale_t, shift_t = self.emb_layers(emb).float().chunk(2, dim=1)
        scale_z, shift_z = self.cond_emb_layers(latent).float().chunk(2, dim=1)
        h = norm_film_silu(self.out_layers[0], h, (1 + scale_t) * (1 + scale_z), shift_t * (1 + scale_z) + shift_z)
        return self.skip_connection(x) + self.out_layers[3](self.out_layers[2](h))


class AttentionBlock(nn.Module):
    """Spatial self-attention with guided-diffusion's legacy QKV layout (Conv1d projections)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"attention: {channels} channels not divisible by num_head_channels {num_head_channels}")
            num_heads = channels // num_head_channels
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        # Legacy order: the 3C channels are grouped per head first, then split into q, k, v.
        q, k, v = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, length).transpose(-1, -2).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, ch); scale 1/sqrt(ch) as in ADM
        h = h.transpose(-1, -2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential whose ResBlocks also receive the time embedding and the global latent."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, latent) if isinstance(layer, ResBlock) else layer(x)
        return x


class DiffusionRigUNet(nn.Module):
    """ADM UNet conditioned on physical buffers (concatenated to the input) and a global latent (FiLM).

    ``attention_ds`` are the downsampling factors (image_size // resolution) at which attention is applied.
    """

    def __init__(self, *, in_channels: int, out_channels: int, model_channels: int, num_res_blocks: int,
                 channel_mult: tuple[float, ...], attention_ds: tuple[int, ...], dropout: float,
                 num_heads: int, num_head_channels: int, latent_dim: int):
        super().__init__()
        self.model_channels = model_channels
        self.memory_format = torch.contiguous_format  # activation layout (channels_last for bf16 convolutions)
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch: int, out: int, **kw) -> ResBlock:
            return ResBlock(ch, emb_dim, latent_dim, dropout, out_channels=out, **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(res(ch, ch, down=True)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_init(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, buffers: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) noisy image, (B,) steps, (B,9,S,S) buffers, (B,latent_dim) latent -> (B,3,S,S) epsilon."""
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h = torch.cat([x_t, buffers.to(x_t.dtype)], dim=1).contiguous(memory_format=self.memory_format)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, latent)
            skips.append(h)
        h = self.middle_block(h, emb, latent)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, latent)
        return self.out[2](norm_film_silu(self.out[0], h)).type(x_t.dtype).contiguous()
