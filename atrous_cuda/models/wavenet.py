"""WaveNet (van den Oord et al. 2016): causal dilated conv1d residual blocks, on the atrous kernels.

    input     1x1 conv, in_channels -> residual_channels
    block     causal dilated conv (kernel_size taps, dilation d) -> 2*gate_channels,
              z = tanh(filter) * sigmoid(gate);
              residual: x + 1x1(z);  skip: 1x1(z)
              dilations 1, 2, 4, ..., 512, repeated `stacks` times
    output    sum of skips -> ReLU -> 1x1 -> ReLU -> 1x1 -> out_channels

Incremental generation. Block output at t reads the block's input at
t, t - d, ..., t - (k-1)d only, so each block keeps a ring buffer of its last
(k-1)*d inputs (zeros at the start, which is what causal padding means).
`reset_state(batch_size)` clears the buffers and `step(x_t)` computes one time
step in O(layers * k) work, independent of t, so T samples cost O(T). Every
step runs the same ops as `forward` (the dilated conv on the k gathered
columns, the 1x1 convs on one column).
"""
from typing import Optional, Sequence

import torch
from torch import nn

from ..functional import atrous_conv1d
from ..modules import AtrousConv1d
from ._validate import check_int, check_ints

__all__ = ["WaveNet", "WaveNetBlock"]


class WaveNetBlock(nn.Module):
    def __init__(self, residual_channels, gate_channels, skip_channels, dilation, kernel_size):
        super().__init__()
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = AtrousConv1d(residual_channels, 2 * gate_channels, kernel_size, dilation=dilation,
                                 padding="causal")
        self.residual = AtrousConv1d(gate_channels, residual_channels, 1)
        self.skip = AtrousConv1d(gate_channels, skip_channels, 1)

    def _gated(self, pre):
        filt, gate = pre.chunk(2, dim=1)
        # sigmoid(g) = (1 + tanh(g/2)) / 2 exactly (g/2 and /2 are exact). torch's CPU
        # sigmoid rounds differently in its SIMD body and its scalar tail, so a one-column
        # step and a whole sequence could differ in the last bit; tanh does not, which
        # makes step() bitwise equal to forward(). The cost: an absolute error of about
        # one ulp of 1 where sigmoid(g) is tiny (g < -37 in float64), harmless in a gate.
        return torch.tanh(filt) * ((1 + torch.tanh(gate * 0.5)) * 0.5)

    def forward(self, x):
        z = self._gated(self.conv(x))
        return x + self.residual(z), self.skip(z)

    @property
    def history(self):
        """Number of past inputs the conv reads: (k-1)*d."""
        return (self.kernel_size - 1) * self.dilation

    def step(self, x_t, buffer, t):
        """x_t (N, C, 1); buffer (N, C, history) holds input t' at column t' mod history."""
        if self.history > 0:
            # Tap m of the causal conv reads input t - (k-1-m)*d; for m < k-1 that is in the buffer.
            cols = [(t - (self.kernel_size - 1 - m) * self.dilation) % self.history
                    for m in range(self.kernel_size - 1)]
            window = torch.cat([buffer[:, :, cols], x_t], dim=2)
            buffer[:, :, t % self.history] = x_t[:, :, 0]
        else:
            window = x_t
        pre = atrous_conv1d(window, self.conv.weight, self.conv.bias, dilation=1)
        z = self._gated(pre)
        return x_t + self.residual(z), self.skip(z)


class WaveNet(nn.Module):
    """WaveNet(in_channels, out_channels, residual_channels=32, gate_channels=32,
    skip_channels=64, dilations=(1, 2, ..., 512), stacks=2, kernel_size=2).

    forward(x: (N, in_channels, T)) -> (N, out_channels, T); output t depends on
    inputs 0..t only. `receptive_field` = 1 + (k-1) * sum of dilations.
    """

    def __init__(self, in_channels: int, out_channels: int, residual_channels: int = 32, gate_channels: int = 32,
                 skip_channels: int = 64, dilations: Sequence[int] = tuple(2 ** i for i in range(10)),
                 stacks: int = 2, kernel_size: int = 2):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("residual_channels", residual_channels), ("gate_channels", gate_channels),
                            ("skip_channels", skip_channels), ("stacks", stacks), ("kernel_size", kernel_size)):
            check_int("WaveNet", name, value)
        dilations = check_ints("WaveNet", "dilations", dilations)
        self.in_channels = in_channels
        self.residual_channels = residual_channels
        self.input_conv = AtrousConv1d(in_channels, residual_channels, 1)
        self.blocks = nn.ModuleList(
            [WaveNetBlock(residual_channels, gate_channels, skip_channels, d, kernel_size)
             for _ in range(stacks) for d in dilations]
        )
        self.output = nn.Sequential(
            nn.ReLU(), AtrousConv1d(skip_channels, skip_channels, 1), nn.ReLU(),
            AtrousConv1d(skip_channels, out_channels, 1),
        )
        self.receptive_field = 1 + sum(b.history for b in self.blocks)
        self._buffers_state = None
        self._t = 0

    def forward(self, x):
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"WaveNet: expected input (N, {self.in_channels}, T), got size " + str(list(x.shape)))
        h = self.input_conv(x)
        skips: Optional[torch.Tensor] = None
        for block in self.blocks:
            h, s = block(h)
            skips = s if skips is None else skips + s
        assert skips is not None  # the constructor requires at least one block
        return self.output(skips)

    def reset_state(self, batch_size: int):
        """Starts a new sequence of `step` calls for batch_size sequences (all past inputs zero)."""
        check_int("WaveNet.reset_state", "batch_size", batch_size)
        p = self.input_conv.weight
        self._buffers_state = [p.new_zeros(batch_size, self.residual_channels, b.history) for b in self.blocks]
        self._t = 0

    @torch.no_grad()
    def step(self, x_t):
        """One time step: x_t (N, in_channels) -> output at that step (N, out_channels).

        Equal to forward(x)[:, :, t] for the t-th call since reset_state.
        Runs without autograd (generation). x_t must have the dtype and device
        of the model's parameters; the step cache follows the model if it is
        moved or cast (model.to(...)) between reset_state and step.
        """
        if self._buffers_state is None:
            raise RuntimeError("WaveNet.step: call reset_state(batch_size) first")
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"WaveNet.step: expected x_t to be a tensor, got {type(x_t).__name__}")
        n = self._buffers_state[0].shape[0]
        if x_t.dim() != 2 or x_t.shape != (n, self.in_channels):
            raise ValueError(f"WaveNet.step: expected x_t of size ({n}, {self.in_channels}), got {tuple(x_t.shape)}")
        p = self.input_conv.weight
        if x_t.dtype != p.dtype or x_t.device != p.device:
            raise TypeError(f"WaveNet.step: expected x_t of dtype {p.dtype} on {p.device} (the model's parameters), "
                            f"got {x_t.dtype} on {x_t.device}")
        if self._buffers_state[0].dtype != p.dtype or self._buffers_state[0].device != p.device:
            # The model was moved (model.to(...)) since reset_state: the cache follows it,
            # keeping the past inputs it holds (converted like the parameters were).
            self._buffers_state = [b.to(device=p.device, dtype=p.dtype) for b in self._buffers_state]
        h = self.input_conv(x_t.unsqueeze(2))
        skips = 0
        for block, buffer in zip(self.blocks, self._buffers_state):
            h, s = block.step(h, buffer, self._t)
            skips = skips + s
        self._t += 1
        return self.output(skips)[:, :, 0]
