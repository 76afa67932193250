"""WaveNet (van den Oord et al. 2016): causal dilated conv1d residual blocks, on the atrous kernels.

    input     1x1 conv, in_channels -> residual_channels
    block     causal dilated conv (kernel_size taps, dilation d) -> 2*gate_channels,
              plus the block's share of the conditioning (below),
              z = tanh(filter) * sigmoid(gate)   (atrous_cuda's gated_activation);
              residual: x + 1x1(z);  skip: 1x1(z)
              dilations 1, 2, 4, ..., 512, repeated `stacks` times
    output    sum of skips -> ReLU -> 1x1 -> ReLU -> 1x1 -> out_channels (logits)

Conditioning, as WaveNet vocoders use it:
    local     features at a lower rate (mel frames, local_channels each), upsampled
              `upsample_factor` times ("repeat", or "transposed": a learned transposed
              conv with kernel = stride = the factor), then one 1x1 conv (no bias) to
              every block's 2*gate_channels pre-activations;
    global    one vector per sequence (a speaker embedding, global_channels), through a
              1x1 conv (no bias) to every block's pre-activations, the same at every t.

Incremental generation. Block output at t reads the block's input at
t, t - d, ..., t - (k-1)d only, so each block keeps a ring of its last
(k-1)*d inputs (zeros at the start, which is what causal padding means); all
rings live in one state tensor (WaveNetState). `reset_state(batch_size)`
starts a sequence; `step(x)` advances every block by one or more time steps
in O(layers) work per step; `generate(n)` runs the autoregressive loop,
feeding each sampled class back as the next input. On the CPU (float32 and
float64) both run in C++ (csrc/cpu/wavenet_kernel.cpp) on weights packed once
per generation, and equal `forward` bitwise; elsewhere (CUDA, 16-bit models)
they run the per-block torch ops below.
"""
import math
import warnings
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .._C import TensorVersions
from .._wavenet_ops import wavenet_generate, wavenet_pack, wavenet_step
from ..functional import atrous_conv1d
from ..modules import AtrousConv1d, AtrousConvTranspose2d
from ._validate import check_int, check_ints

__all__ = ["WaveNet", "WaveNetBlock", "WaveNetState"]

class _AlwaysChanged:
    """The watch of parameters without version counters: always reports a change."""

    def changed(self) -> bool:
        return True


# Parameter dtypes of the C++ generation ops (others run the per-block torch ops).
_NATIVE_DTYPES = (torch.float32, torch.float64)

# Steps per call of the generation op: progress is reported, and an interrupt
# (Ctrl-C) is taken, between calls; each call leaves the state consistent.
_GENERATE_CHUNK = 1024


class WaveNetBlock(nn.Module):
    def __init__(self, residual_channels, gate_channels, skip_channels, dilation, kernel_size):
        super().__init__()
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = AtrousConv1d(residual_channels, 2 * gate_channels, kernel_size, dilation=dilation,
                                 padding="causal")
        self.residual = AtrousConv1d(gate_channels, residual_channels, 1)
        self.skip = AtrousConv1d(gate_channels, skip_channels, 1)

    def forward(self, x: Tensor, local: Optional[Tensor] = None, global_: Optional[Tensor] = None):
        """x (N, R, T); local (N, 2G, T) and global_ (N, 2G, 1): this block's conditioning."""
        pre = self.conv(x)
        if local is not None:
            pre = pre + local
        if global_ is not None:
            pre = pre + global_
        z = _gate(pre)
        return x + self.residual(z), self.skip(z)

    @property
    def history(self):
        """Number of past inputs the conv reads: (k-1)*d."""
        return (self.kernel_size - 1) * self.dilation

    def step(self, x_t, ring, t, local=None, global_=None):
        """One step with torch ops. x_t (N, R, 1); ring (history, N, R) holds input t' in slot t' mod history;
        local and global_ (N, 2G) or None."""
        if self.history > 0:
            # Tap m of the causal conv reads input t - (k-1-m)*d; for m < k-1 that is in the ring.
            slots = [(t - (self.kernel_size - 1 - m) * self.dilation) % self.history
                     for m in range(self.kernel_size - 1)]
            window = torch.cat([ring[slots].permute(1, 2, 0), x_t], dim=2)
            ring[t % self.history] = x_t[:, :, 0]
        else:
            window = x_t
        pre = atrous_conv1d(window, self.conv.weight, self.conv.bias, dilation=1)
        if local is not None:
            pre = pre + local.unsqueeze(2)
        if global_ is not None:
            pre = pre + global_.unsqueeze(2)
        z = _gate(pre)
        return x_t + self.residual(z), self.skip(z)


def _gate(pre: Tensor) -> Tensor:
    if pre.device.type == "cpu":
        return torch.ops.atrous.gated_activation(pre)
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class WaveNetState:
    """Where a WaveNet is in a generated sequence: every block's ring of past inputs, in one tensor.

    buffers     (slots, N, residual_channels): block i's ring is
                buffers[offset_i : offset_i + (k-1)*d_i], input t' in slot t' mod (k-1)*d_i
    t           steps taken since reset_state
    next_input  (N, in_channels): the input that generate() chose for step t (the fed-back
                class of its last step), or None
    weights_dtype  None (the parameters' dtype), or torch.bfloat16 (see WaveNet.reset_state)

    It can be copied (clone), moved or cast (to), and put back (model.state = s) to
    continue a sequence from there.
    """

    def __init__(self, buffers: Tensor, t: int = 0, next_input: Optional[Tensor] = None,
                 weights_dtype: Optional[torch.dtype] = None):
        self.buffers = buffers
        # t lives in a tensor that the C++ ops advance together with the rings (and generate's
        # next input), so an interrupt between two Python statements cannot split them.
        self.position = torch.tensor([t], dtype=torch.int64)
        self.next_input = next_input
        self.weights_dtype = weights_dtype

    @property
    def t(self) -> int:
        return int(self.position[0])

    @t.setter
    def t(self, value: int):
        self.position[0] = value

    @property
    def batch_size(self) -> int:
        return self.buffers.shape[1]

    def clone(self) -> "WaveNetState":
        return WaveNetState(self.buffers.clone(), self.t,
                            None if self.next_input is None else self.next_input.clone(), self.weights_dtype)

    def to(self, *args, **kwargs) -> "WaveNetState":
        return WaveNetState(self.buffers.to(*args, **kwargs), self.t,
                            None if self.next_input is None else self.next_input.to(*args, **kwargs),
                            self.weights_dtype)

    def __repr__(self):
        weights = "" if self.weights_dtype is None else f", weights_dtype={self.weights_dtype}"
        return (f"WaveNetState(batch_size={self.batch_size}, t={self.t}, slots={self.buffers.shape[0]}, "
                f"dtype={self.buffers.dtype}, device={self.buffers.device}{weights})")


class WaveNet(nn.Module):
    """WaveNet(in_channels, out_channels, residual_channels=32, gate_channels=32,
    skip_channels=64, dilations=(1, 2, ..., 512), stacks=2, kernel_size=2,
    local_channels=0, upsample_factor=1, upsample="repeat", global_channels=0).

    forward(x: (N, in_channels, T), local_conditioning=None, global_conditioning=None)
    -> (N, out_channels, T); output t depends on inputs 0..t only (and on the
    conditioning). local_conditioning: frames (N, local_channels, F) with
    F * upsample_factor >= T (the upsampled features are cut to T);
    global_conditioning: (N, global_channels). `receptive_field` = 1 + (k-1) * sum of dilations.
    """

    __jit_unused_properties__ = ["state"]

    def __init__(self, in_channels: int, out_channels: int, residual_channels: int = 32, gate_channels: int = 32,
                 skip_channels: int = 64, dilations: Sequence[int] = tuple(2 ** i for i in range(10)),
                 stacks: int = 2, kernel_size: int = 2, local_channels: int = 0, upsample_factor: int = 1,
                 upsample: str = "repeat", global_channels: int = 0):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("residual_channels", residual_channels), ("gate_channels", gate_channels),
                            ("skip_channels", skip_channels), ("stacks", stacks), ("kernel_size", kernel_size),
                            ("upsample_factor", upsample_factor)):
            check_int("WaveNet", name, value)
        check_int("WaveNet", "local_channels", local_channels, minimum=0)
        check_int("WaveNet", "global_channels", global_channels, minimum=0)
        if upsample not in ("repeat", "transposed"):
            raise ValueError(f"WaveNet: expected upsample to be 'repeat' or 'transposed', got {upsample!r}")
        dilations = check_ints("WaveNet", "dilations", dilations)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.residual_channels = residual_channels
        self.gate_channels = gate_channels
        self.local_channels = local_channels
        self.global_channels = global_channels
        self.upsample_factor = upsample_factor
        self.upsample_mode = upsample
        self.input_conv = AtrousConv1d(in_channels, residual_channels, 1)
        self.blocks = nn.ModuleList(
            [WaveNetBlock(residual_channels, gate_channels, skip_channels, d, kernel_size)
             for _ in range(stacks) for d in dilations]
        )
        self.output = nn.Sequential(
            nn.ReLU(), AtrousConv1d(skip_channels, skip_channels, 1), nn.ReLU(),
            AtrousConv1d(skip_channels, out_channels, 1),
        )
        # Every block's conditioning comes out of one 1x1 conv: block i reads
        # channels [2G*i, 2G*(i+1)).
        conditioned = len(self.blocks) * 2 * gate_channels
        self.local_conditioning = AtrousConv1d(local_channels, conditioned, 1, bias=False) if local_channels else None
        self.upsample = (AtrousConvTranspose2d(local_channels, local_channels, (1, upsample_factor),
                                               stride=(1, upsample_factor))
                         if local_channels and upsample == "transposed" else None)
        self.global_conditioning = (AtrousConv1d(global_channels, conditioned, 1, bias=False)
                                    if global_channels else None)
        self.receptive_field = 1 + sum(b.history for b in self.blocks)
        self._state = None  # a WaveNetState after reset_state
        self._packed = None  # (TensorVersions of the parameters, packed, plan) of the C++ generation path

    # ------------------------------------------------------------------ forward --

    def upsample_conditioning(self, frames: Tensor) -> Tensor:
        """Local-conditioning frames (N, local_channels, F) -> features at the sample rate
        (N, local_channels, F * upsample_factor): the columns that step() takes."""
        if self.local_channels == 0:
            raise ValueError("WaveNet: this model has no local conditioning (local_channels=0)")
        if frames.dim() != 3 or frames.shape[1] != self.local_channels:
            raise ValueError(f"WaveNet: expected local_conditioning frames (N, {self.local_channels}, F), "
                             f"got size {list(frames.shape)}")
        if self.upsample is not None:
            return self.upsample(frames.unsqueeze(2)).squeeze(2)
        return frames.repeat_interleave(self.upsample_factor, dim=2)

    def _conditioning(self, x: Tensor, local_conditioning: Optional[Tensor], global_conditioning: Optional[Tensor]):
        """Every block's conditioning for the T columns of x: (N, blocks*2G, T) and (N, blocks*2G, 1), or None."""
        n, length = x.shape[0], x.shape[2]
        local: Optional[Tensor] = None
        glob: Optional[Tensor] = None
        if local_conditioning is not None:
            if self.local_conditioning is None:
                raise ValueError("WaveNet: got local_conditioning, but the model has local_channels=0")
            if local_conditioning.dim() != 3 or local_conditioning.shape[0] != n:
                raise ValueError(f"WaveNet: expected local_conditioning frames ({n}, {self.local_channels}, F), "
                                 f"got size {list(local_conditioning.shape)}")
            features = self.upsample_conditioning(local_conditioning)
            if features.shape[2] < length:
                raise ValueError(f"WaveNet: expected local_conditioning to cover the {length} samples "
                                 f"(at least {-(-length // self.upsample_factor)} frames of {self.upsample_factor}), "
                                 f"got {local_conditioning.shape[2]} frames")
            local = self.local_conditioning(features[:, :, :length])
        elif self.local_conditioning is not None:
            raise ValueError(f"WaveNet: expected local_conditioning frames (N, {self.local_channels}, F): "
                             "the model was built with local_channels")
        if global_conditioning is not None:
            if self.global_conditioning is None:
                raise ValueError("WaveNet: got global_conditioning, but the model has global_channels=0")
            if global_conditioning.dim() != 2 or global_conditioning.shape[0] != n or \
                    global_conditioning.shape[1] != self.global_channels:
                raise ValueError(f"WaveNet: expected global_conditioning of size ({n}, {self.global_channels}), "
                                 f"got {list(global_conditioning.shape)}")
            glob = self.global_conditioning(global_conditioning.unsqueeze(2))
        elif self.global_conditioning is not None:
            raise ValueError(f"WaveNet: expected global_conditioning (N, {self.global_channels}): "
                             "the model was built with global_channels")
        return local, glob

    def forward(self, x: Tensor, local_conditioning: Optional[Tensor] = None,
                global_conditioning: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"WaveNet: expected input (N, {self.in_channels}, T), got size " + str(list(x.shape)))
        local, glob = self._conditioning(x, local_conditioning, global_conditioning)
        h = self.input_conv(x)
        skips: Optional[Tensor] = None
        width = 2 * self.gate_channels
        for i, block in enumerate(self.blocks):
            local_i: Optional[Tensor] = None
            glob_i: Optional[Tensor] = None
            if local is not None:
                local_i = local[:, i * width:(i + 1) * width]
            if glob is not None:
                glob_i = glob[:, i * width:(i + 1) * width]
            h, s = block(h, local_i, glob_i)
            skips = s if skips is None else skips + s
        assert skips is not None  # the constructor requires at least one block
        return self.output(skips)

    # ------------------------------------------------------- incremental state --

    def _slot_offsets(self) -> List[int]:
        offsets, total = [], 0
        for b in self.blocks:
            offsets.append(total)
            total += b.history
        return offsets + [total]

    def reset_state(self, batch_size: int, weights_dtype: Optional[torch.dtype] = None):
        """Starts a new sequence of `step`/`generate` calls for batch_size sequences (all past inputs zero).

        weights_dtype=torch.bfloat16 (a float32 model on the CPU): the C++ path multiplies by
        bfloat16 copies of the weights, with float32 activations and sums. That halves the
        weight bytes that every step streams through the caches; the outputs then differ from
        forward by the weights' rounding (bench/results/bench-cpu.md has the measured error).
        """
        check_int("WaveNet.reset_state", "batch_size", batch_size)
        p = self.input_conv.weight
        if weights_dtype is not None and weights_dtype != p.dtype and not (
                weights_dtype == torch.bfloat16 and p.dtype == torch.float32 and p.device.type == "cpu"):
            raise ValueError(f"WaveNet.reset_state: expected weights_dtype None or torch.bfloat16 (for a float32 "
                             f"model on the CPU), got {weights_dtype} for a {p.dtype} model on {p.device}")
        slots = self._slot_offsets()[-1]
        self._state = WaveNetState(p.new_zeros(slots, batch_size, self.residual_channels),
                                   weights_dtype=None if weights_dtype == p.dtype else weights_dtype)
        self._packed = None  # re-read the parameter objects

    @property
    def state(self) -> Optional[WaveNetState]:
        """The generation state (None before reset_state); assign a WaveNetState to continue from it."""
        return self._state

    @state.setter
    def state(self, value: Optional[WaveNetState]):
        if value is not None:
            if not isinstance(value, WaveNetState):
                raise TypeError(f"WaveNet.state: expected a WaveNetState or None, got {type(value).__name__}")
            expected = (self._slot_offsets()[-1], self.residual_channels)
            got = (value.buffers.shape[0], value.buffers.shape[2]) if value.buffers.dim() == 3 else None
            if got != expected:
                raise ValueError(f"WaveNet.state: expected buffers of size ({expected[0]}, N, {expected[1]}) "
                                 f"for this model, got {list(value.buffers.shape)}")
        self._state = value
        self._packed = None  # the next step checks the state against the parameters

    def _current_state(self, caller: str) -> WaveNetState:
        state = self._state
        if state is None:
            raise RuntimeError(f"WaveNet.{caller}: call reset_state(batch_size) first")
        p = self.input_conv.weight
        if state.buffers.dtype != p.dtype or state.buffers.device != p.device:
            # The model was moved (model.to(...)) since reset_state: the state follows it,
            # keeping the past inputs it holds (converted like the parameters were).
            state = self._state = state.to(device=p.device, dtype=p.dtype)
            if state.weights_dtype is not None and not (p.dtype == torch.float32 and p.device.type == "cpu"):
                state.weights_dtype = None  # bfloat16 weights serve float32 CPU models only
        return state

    def _native(self) -> bool:
        """Whether step/generate run the C++ ops: CPU parameters of float32 or float64."""
        p = self.input_conv.weight
        return p.device.type == "cpu" and p.dtype in _NATIVE_DTYPES

    def _pack_arguments(self):
        blocks = self.blocks
        hidden, output = self.output[1], self.output[3]

        def bias(conv):
            return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.weight.shape[0])

        return (self.input_conv.weight, bias(self.input_conv),
                [b.conv.weight for b in blocks], [bias(b.conv) for b in blocks],
                [b.residual.weight for b in blocks], [bias(b.residual) for b in blocks],
                [b.skip.weight for b in blocks], [bias(b.skip) for b in blocks],
                hidden.weight, bias(hidden), output.weight, bias(output),
                [b.dilation for b in blocks])

    def _generation(self, caller: str):
        """(state, packed, plan) for the next steps: packed and plan are the C++ path's weights
        (None on the torch path: CUDA, 16-bit models), packed once and again whenever a parameter
        changes (an in-place update such as an optimizer step or load_state_dict, or new data from
        .to(), which the state then follows). Watched: every parameter of the model (the originals
        of a parametrization such as weight_norm included), by version counter and data pointer.
        Not seen: changes through `.data` (no version counter moves; autograd misses them too) and
        a Parameter replaced by a new object (load_state_dict(assign=True)) until reset_state."""
        state = self._state
        if state is None:
            raise RuntimeError(f"WaveNet.{caller}: call reset_state(batch_size) first")
        cache = self._packed
        if cache is None or cache[0].changed():
            state = self._current_state(caller)
            args = self._pack_arguments()
            params = list(self.parameters())
            if any(p.is_inference() for p in params):
                # No version counters: an in-place update (load_state_dict) would go unseen, so
                # every call packs again (about a millisecond for the model).
                warnings.warn("WaveNet: parameters made under torch.inference_mode() have no version counter, "
                              "so step() and generate() pack the weights again on every call; create the "
                              "model outside inference_mode", stacklevel=3)
                params = None
            packed = plan = None
            if self._native():
                with torch.no_grad():
                    packed, plan = wavenet_pack(*(a.detach() if isinstance(a, Tensor) else [t.detach() for t in a]
                                                  for a in args[:-1]), args[-1], state.weights_dtype)
            self._packed = cache = (_AlwaysChanged() if params is None else TensorVersions(params), packed, plan)
        return state, cache[1], cache[2]

    def _apply(self, fn, recurse=True):
        # .to(), .double(), .cuda(), ...: let go of the packed weights (and the parameters they
        # watch) before the parameters change, so a swap of parameter tensors finds no other owner.
        self._packed = None
        return super()._apply(fn, recurse)

    def _step_conditioning(self, n: int, steps: int, local: Optional[Tensor], glob: Optional[Tensor], caller: str):
        """Projected conditioning for `steps` steps: local (N, blocks*2G, steps) from upsampled
        features (N, local_channels, steps), global (N, blocks*2G) from (N, global_channels)."""
        local_proj = glob_proj = None
        if self.local_conditioning is not None:
            if local is None:
                raise ValueError(f"WaveNet.{caller}: expected local_conditioning (the model has local_channels="
                                 f"{self.local_channels})")
            if local.dim() != 3 or tuple(local.shape) != (n, self.local_channels, steps):
                raise ValueError(f"WaveNet.{caller}: expected local_conditioning of size "
                                 f"({n}, {self.local_channels}, {steps}), got {list(local.shape)}")
            local_proj = self.local_conditioning(local)
        elif local is not None:
            raise ValueError(f"WaveNet.{caller}: got local_conditioning, but the model has local_channels=0")
        return local_proj, self._global_projection(n, glob, caller)

    def _global_projection(self, n: int, glob: Optional[Tensor], caller: str) -> Optional[Tensor]:
        """Every block's global conditioning (N, blocks*2G) from (N, global_channels), or None."""
        glob_proj = None
        if self.global_conditioning is not None:
            if glob is None:
                raise ValueError(f"WaveNet.{caller}: expected global_conditioning (the model has global_channels="
                                 f"{self.global_channels})")
            if glob.dim() != 2 or tuple(glob.shape) != (n, self.global_channels):
                raise ValueError(f"WaveNet.{caller}: expected global_conditioning of size "
                                 f"({n}, {self.global_channels}), got {list(glob.shape)}")
            glob_proj = self.global_conditioning(glob.unsqueeze(2))[:, :, 0]
        elif glob is not None:
            raise ValueError(f"WaveNet.{caller}: got global_conditioning, but the model has global_channels=0")
        return glob_proj

    def _check_tensor(self, caller: str, name: str, value):
        """value is a tensor of the state's dtype and device (which follow the parameters')."""
        buffers = self._state.buffers
        if not isinstance(value, Tensor):
            raise TypeError(f"WaveNet.{caller}: expected {name} to be a tensor, got {type(value).__name__}")
        if value.dtype != buffers.dtype or value.device != buffers.device:
            raise TypeError(f"WaveNet.{caller}: expected {name} of dtype {buffers.dtype} on {buffers.device} (the "
                            f"model's parameters), got {value.dtype} on {value.device}")

    def _steps_torch(self, state: WaveNetState, x: Tensor, local: Optional[Tensor], glob: Optional[Tensor]):
        """Steps with torch ops, one block at a time: x (N, in, S) -> (N, out, S)."""
        offsets = self._slot_offsets()
        width = 2 * self.gate_channels
        outputs = []
        for s in range(x.shape[2]):
            t = state.t
            h = self.input_conv(x[:, :, s:s + 1])
            skips: Optional[Tensor] = None
            for i, block in enumerate(self.blocks):
                ring = state.buffers[offsets[i]:offsets[i + 1]]
                local_i = None if local is None else local[:, i * width:(i + 1) * width, s]
                glob_i = None if glob is None else glob[:, i * width:(i + 1) * width]
                h, skip = block.step(h, ring, t, local_i, glob_i)
                skips = skip if skips is None else skips + skip
            outputs.append(self.output(skips))
            state.t = t + 1
        return torch.cat(outputs, dim=2)

    def step(self, x: Tensor, local_conditioning: Optional[Tensor] = None,
             global_conditioning: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced steps: x (N, in_channels) -> (N, out_channels), or S steps at once,
        x (N, in_channels, S) -> (N, out_channels, S).

        Equal to forward(x)[:, :, t] for the t-th step since reset_state (bitwise on
        the CPU in float32/float64). local_conditioning: the upsampled features of
        these steps, (N, local_channels) or (N, local_channels, S) (columns of
        upsample_conditioning(frames)); global_conditioning: (N, global_channels).
        Runs without autograd. x must have the dtype and device of the model's
        parameters; the state follows the model if it is moved or cast
        (model.to(...)) between reset_state and step.
        """
        state, packed, plan = self._generation("step")
        buffers = state.buffers
        if not isinstance(x, Tensor):
            raise TypeError(f"WaveNet.step: expected x to be a tensor, got {type(x).__name__}")
        if x.dtype != buffers.dtype or x.device != buffers.device:
            raise TypeError(f"WaveNet.step: expected x of dtype {buffers.dtype} on {buffers.device} (the model's "
                            f"parameters), got {x.dtype} on {x.device}")
        n = buffers.shape[1]
        single = x.dim() == 2
        if x.dim() not in (2, 3) or x.shape[0] != n or x.shape[1] != self.in_channels:
            raise ValueError(f"WaveNet.step: expected x of size ({n}, {self.in_channels}) or "
                             f"({n}, {self.in_channels}, steps), got {tuple(x.shape)}")
        inputs = x.unsqueeze(2) if single else x
        if packed is not None and local_conditioning is None and global_conditioning is None and \
                not (self.local_channels or self.global_channels or x.requires_grad):
            # The common case, kept lean (a step is tens of microseconds): the op records no graph.
            state.next_input = None
            out = wavenet_step(buffers, packed, plan, inputs, None, None, state.position)
            return out.select(2, 0) if single else out
        local = glob = None
        with torch.no_grad():
            if local_conditioning is not None or global_conditioning is not None or self.local_channels or \
                    self.global_channels:
                if local_conditioning is not None:
                    self._check_tensor("step", "local_conditioning", local_conditioning)
                    if single and local_conditioning.dim() == 2:
                        local_conditioning = local_conditioning.unsqueeze(2)
                if global_conditioning is not None:
                    self._check_tensor("step", "global_conditioning", global_conditioning)
                local, glob = self._step_conditioning(n, inputs.shape[2], local_conditioning, global_conditioning,
                                                      "step")
            state.next_input = None
            if packed is not None:
                out = wavenet_step(buffers, packed, plan, inputs, local, glob, state.position)
            else:
                out = self._steps_torch(state, inputs, local, glob)
        return out.select(2, 0) if single else out

    def _feedback_table(self, feedback) -> Tensor:
        p = self.input_conv.weight
        classes, width = self.out_channels, self.in_channels
        if isinstance(feedback, str):
            if feedback == "one_hot":
                if classes != width:
                    raise ValueError(f"WaveNet.generate: feedback='one_hot' needs in_channels == out_channels, got "
                                     f"{width} and {classes}")
                return torch.eye(classes, dtype=p.dtype, device=p.device)
            if feedback == "mu_law":
                if width != 1:
                    raise ValueError(f"WaveNet.generate: feedback='mu_law' needs in_channels == 1, got {width}")
                return mu_law_decode(torch.arange(classes, device=p.device), classes).to(p.dtype).unsqueeze(1)
            raise ValueError(f"WaveNet.generate: expected feedback to be 'one_hot', 'mu_law', a tensor "
                             f"({classes}, {width}) or an nn.Embedding, got {feedback!r}")
        if isinstance(feedback, nn.Embedding):
            feedback = feedback.weight
        if not isinstance(feedback, Tensor) or feedback.dim() != 2 or tuple(feedback.shape) != (classes, width):
            shape = list(feedback.shape) if isinstance(feedback, Tensor) else type(feedback).__name__
            raise ValueError(f"WaveNet.generate: expected feedback of size ({classes}, {width}) (the model input "
                             f"for each output class), got {shape}")
        return feedback.detach().to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def generate(self, num_samples: Optional[int] = None, first_input: Optional[Tensor] = None, *,
                 temperature: float = 1.0, greedy: bool = False, feedback: Union[str, Tensor, nn.Embedding] = "one_hot",
                 local_conditioning: Optional[Tensor] = None, global_conditioning: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None,
                 progress: Union[bool, Callable[[int, int], None]] = False) -> Tensor:
        """Autoregressive generation from the current state (reset_state first): returns the
        classes (N, num_samples), int64.

        Each step's output is turned into a class, greedily (argmax, `greedy=True`) or by
        sampling softmax(logits / temperature); that class's row of `feedback` is the next
        step's input: 'one_hot' (in_channels == out_channels), 'mu_law' (in_channels == 1:
        the class's mu-law value in [-1, 1], for 8-bit mu-law audio), a tensor
        (out_channels, in_channels) or an nn.Embedding. The first step's input is
        `first_input` (N, in_channels), by default the state's next_input (where an earlier
        generate stopped) or zeros. local_conditioning: frames (N, local_channels, F)
        covering the samples to generate, the first of them at the first generated sample
        (num_samples defaults to F * upsample_factor); global_conditioning (N, global_channels).
        `generator` makes sampling reproducible (default: torch's global generator);
        `progress=True` shows a bar, or pass a callable(done, total).

        The state advances as steps are taken: after an interrupt it holds every finished
        chunk, and generate() continues from there.
        """
        state, packed, plan = self._generation("generate")
        n = state.batch_size
        p = self.input_conv.weight
        features = None
        if local_conditioning is not None:
            self._check_tensor("generate", "local_conditioning", local_conditioning)
            if local_conditioning.dim() != 3 or local_conditioning.shape[0] != n:
                raise ValueError(f"WaveNet.generate: expected local_conditioning frames ({n}, {self.local_channels}"
                                 f", F), got size {list(local_conditioning.shape)}")
            features = self.upsample_conditioning(local_conditioning)
            if num_samples is None:
                num_samples = features.shape[2]
            elif features.shape[2] < num_samples:
                raise ValueError(f"WaveNet.generate: expected local_conditioning to cover the {num_samples} samples "
                                 f"(at least {-(-num_samples // self.upsample_factor)} frames), got "
                                 f"{local_conditioning.shape[2]} frames")
        elif self.local_conditioning is not None:
            raise ValueError(f"WaveNet.generate: expected local_conditioning frames (N, {self.local_channels}, F): "
                             "the model was built with local_channels")
        if num_samples is None:
            raise ValueError("WaveNet.generate: expected num_samples (an int >= 1), got None")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"WaveNet.generate: expected num_samples to be an int >= 1, got {num_samples!r}")
        if not greedy and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                               and temperature > 0):
            raise ValueError(f"WaveNet.generate: expected temperature > 0 (or greedy=True), got {temperature!r}")
        if global_conditioning is not None:
            self._check_tensor("generate", "global_conditioning", global_conditioning)
        table = self._feedback_table(feedback)
        if first_input is None:
            first_input = state.next_input if state.next_input is not None else p.new_zeros(n, self.in_channels)
        self._check_tensor("generate", "first_input", first_input)
        if tuple(first_input.shape) != (n, self.in_channels):
            raise ValueError(f"WaveNet.generate: expected first_input of size ({n}, {self.in_channels}), "
                             f"got {list(first_input.shape)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"WaveNet.generate: expected generator to be a torch.Generator, got "
                            f"{type(generator).__name__}")
        report = _progress(progress, num_samples)
        glob = self._global_projection(n, global_conditioning, "generate")
        chunks = []
        # The input of the state's next step, which the op advances in place.
        state.next_input = first_input.contiguous().clone()
        done = 0
        try:
            while done < num_samples:
                steps = min(_GENERATE_CHUNK, num_samples - done)
                local = None
                if features is not None:
                    local = self.local_conditioning(features[:, :, done:done + steps])
                state, packed, plan = self._generation("generate")  # a callback may have changed weights
                if packed is not None:
                    samples = wavenet_generate(state.buffers, packed, plan, state.next_input, table, local, glob,
                                               state.position, steps, float(temperature), bool(greedy), generator)
                else:
                    samples = self._generate_torch(state, table, local, glob, steps, temperature, greedy,
                                                   generator)
                chunks.append(samples)
                done += steps
                report(done)
        finally:
            report(None)
        return torch.cat(chunks, dim=1)

    def _generate_torch(self, state, table, local, glob, steps, temperature, greedy, generator):
        samples = []
        for s in range(steps):
            x = state.next_input
            logits = self._steps_torch(state, x.unsqueeze(2), None if local is None else local[:, :, s:s + 1],
                                       glob)[:, :, 0]
            if greedy:
                k = logits.argmax(dim=1)
            else:
                probs = torch.softmax(logits.double() / temperature, dim=1)
                k = torch.multinomial(probs, 1, generator=generator)[:, 0]
            samples.append(k)
            state.next_input = table[k]  # right after state.t moved: the two stay together
        return torch.stack(samples, dim=1)


def mu_law_decode(classes: Tensor, quantization_channels: int = 256) -> Tensor:
    """The value in [-1, 1] of each mu-law class (mu = quantization_channels - 1):
    y = 2k / mu - 1, x = sign(y) * ((1 + mu)^|y| - 1) / mu."""
    mu = quantization_channels - 1
    y = classes.to(torch.float64) * (2.0 / mu) - 1.0
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def _progress(progress, total):
    """report(done) after each chunk, report(None) at the end."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    try:
        from tqdm import tqdm
    except ImportError:  # no bar without tqdm: a line per chunk on stderr
        import sys

        def report(done):
            if done is not None:
                print(f"WaveNet.generate: {done}/{total} samples", file=sys.stderr)
        return report
    bar = tqdm(total=total, unit="sample", desc="WaveNet.generate")
    shown = [0]

    def report(done):
        if done is None:
            bar.close()
        else:
            bar.update(done - shown[0])
            shown[0] = done
    return report
