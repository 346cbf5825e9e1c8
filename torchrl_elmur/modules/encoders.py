"""Observation encoders that turn an env's observation into the token a memory module reads."""
from __future__ import annotations

import torch
from torch import nn


class PixelEncoder(nn.Module):
    """Camera frames (uint8 ``[*B, C, H, W]``) and optional proprioception ``[*B, P]`` -> ``[*B, width]``.

    Frames are scaled to ``[0, 1]`` and go through three convolutions (the Nature-DQN sizes:
    32 8x8 stride 4, 64 4x4 stride 2, 64 3x3 stride 1, ReLU), then Linear + GELU to ``width``;
    with ``proprio_size`` the proprioceptive vector is concatenated before that Linear. Any number
    of leading batch dims (``[B, T]`` sequences included).

    Examples:
        >>> enc = PixelEncoder(6, 64, width=32)
        >>> enc(torch.zeros(2, 5, 6, 64, 64, dtype=torch.uint8)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, channels: int, image_size: int, *, width: int, proprio_size: int = 0) -> None:
        super().__init__()
        if image_size < 36:
            raise ValueError(f"PixelEncoder: image_size must be >= 36 (three convolutions), received {image_size}.")
        self.channels, self.image_size, self.proprio_size = channels, image_size, proprio_size
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            features = self.conv(torch.zeros(1, channels, image_size, image_size)).shape[-1]
        self.head = nn.Sequential(nn.Linear(features + proprio_size, width), nn.GELU())

    def forward(self, pixels: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(pixels.shape[-3:]) != expected:
            raise ValueError(f"PixelEncoder: 'pixels' must end in {list(expected)}, received {list(pixels.shape)}.")
        batch = pixels.shape[:-3]
        x = self.conv(pixels.reshape(-1, *expected).float().div(255.0))  # [N, features]
        if self.proprio_size:
            if proprio is None or proprio.shape[-1] != self.proprio_size:
                raise ValueError(f"PixelEncoder: 'proprio' must end in {self.proprio_size}, received "
                                 f"{None if proprio is None else list(proprio.shape)}.")
            x = torch.cat([x, proprio.reshape(-1, self.proprio_size).to(x.dtype)], dim=-1)
        return self.head(x).reshape(*batch, -1)


class Standardize(nn.Module):
    """``(x - loc) / scale`` per feature, for observations whose features live on different scales
    (joint angles in radians beside positions in metres a few centimetres apart): ``[*B, size]`` ->
    ``[*B, size]``. ``loc`` and ``scale`` are buffers (saved with the policy), the identity until
    :meth:`fit` sets them from data.

    Examples:
        >>> norm = Standardize(2).fit(torch.tensor([[0.0, 10.0], [2.0, 10.0]]))
        >>> norm(torch.tensor([[1.0, 10.0], [3.0, 11.0]])).tolist()
        [[0.0, 0.0], [2.0, 100.0]]
    """

    def __init__(self, size: int, min_scale: float = 1e-2) -> None:
        super().__init__()
        self.size, self.min_scale = size, min_scale
        self.register_buffer("loc", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardize:
        """Set ``loc`` and ``scale`` to the mean and standard deviation of ``x`` ``[N, size]`` over its
        rows (the scale at least ``min_scale``, so a feature constant in the data stays finite). Returns self."""
        x = x.reshape(-1, x.shape[-1]).double()
        if x.shape[-1] != self.size:
            raise ValueError(f"Standardize.fit: expected [N, {self.size}] data, received {list(x.shape)}.")
        self.loc.copy_(x.mean(0))
        self.scale.copy_(x.std(0, correction=0).clamp_min(self.min_scale))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale

    def extra_repr(self) -> str:
        return f"size={self.size}"
