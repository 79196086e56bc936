"""DiffusionRig's global-latent encoder: a ResNet-18 (torchvision layout and key names) with a 64-d head.

It reads the clean photo as the denoiser sees it, (B,3,S,S) in [-1,1] with no ImageNet normalization (the
official code feeds the [-1,1] image straight in), at any resolution (global average pooling), and returns
the (B,latent_dim) latent that conditions every ResBlock of the denoiser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes outputs of at most 16 positions as one matrix product under CPU autocast.

    ResNet-18's last stage runs 512-channel 3x3 convolutions on 2x2 or 4x4 maps. oneDNN's bf16 kernels
    spend their time there reordering 2.4 M-element weights, not computing: at batch 8 and 2x2, forward plus
    backward takes 9.4 ms as a convolution and 2.8 ms as unfold + matmul. fp32 keeps the plain convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if (x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or ho * wo > 16 or self.groups != 1
                or self.dilation != (1, 1) or self.padding_mode != "zeros"):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu")
        cols = F.unfold(x.to(dtype), self.kernel_size, padding=self.padding, stride=self.stride)
        y = (self.weight.to(dtype).flatten(1) @ cols).view(b, self.out_channels, ho, wo)
        return y if self.bias is None else y + self.bias.to(dtype)[:, None, None]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Encoder(nn.Module):
    """ResNet-18 (2-2-2-2 basic blocks, widths 64..512) whose classifier is replaced by a latent_dim linear."""

    def __init__(self, latent_dim: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.fc = nn.Linear(512, latent_dim)
        self.memory_format = torch.contiguous_format  # activation layout (channels_last for bf16 convolutions)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) image in [-1,1] -> (B,latent_dim) global latent."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image.contiguous(memory_format=self.memory_format)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))
