"""A linear layer's matrix products, forward and backward, through oneDNN's kernels on the CPU.

On an x86 CPU whose MKL takes its AVX2 path (every AMD CPU: MKL picks its kernels by vendor), a float32
matrix product through `torch.addmm` runs at about half the speed of oneDNN's AVX-512 kernels, which
PyTorch ships with and picks by instruction set (measured on this project's AMD EPYC, one thread, 256 x 256
by 256: 85-95 GFLOP/s against 165-200; docs/sac_speed.md). `linear` is `F.linear` with its three products
(the output, and in backward the input's and the weight's gradients) computed by oneDNN's
`torch.ops.mkldnn._linear_pointwise`; transposed operands are read in place, not copied. The function is
F.linear's to float32 rounding (the products sum in another order); the bias's gradient is the same sum.

It takes the oneDNN path only for float32 tensors on the CPU, with PyTorch built with oneDNN, for weights of
at least MIN_WEIGHTS elements (below that oneDNN's per-call cost outweighs its kernel), and never while
tracing or compiling (an export records plain `F.linear`); everything else is `F.linear`. No double
backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

MIN_WEIGHTS = 4096  # a 256 x 23 first layer is faster through oneDNN, a 256 -> 1 head is not
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), x 2-D; either operand may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.input_shape = x.shape
        return _product(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = _product(g2, weight.t()).view(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_w = _product(g2.t(), x2.t()) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), its products through oneDNN where that is faster (the module's docstring)."""
    if (ONEDNN and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and weight.numel() >= MIN_WEIGHTS):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (the same parameters, names and initialisation) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
