"""Linear layers' matrix products, forward and backward, through oneDNN's kernels on the CPU.

On an x86 CPU whose MKL takes its AVX2 path (every AMD CPU: MKL picks its kernels by vendor), a float32
matrix product through `torch.addmm` runs at about half the speed of oneDNN's AVX-512 kernels, which
PyTorch ships with and picks by instruction set (measured on this project's AMD EPYC, one thread, 256 x 256
by 256: 85-95 GFLOP/s against 165-200; docs/sac_speed.md). `linear` is `F.linear` with its three products
(the output, and in backward the input's and the weight's gradients) computed by oneDNN's
`torch.ops.mkldnn._linear_pointwise`; transposed operands are read in place, not copied. The function is
F.linear's to float32 rounding (the products sum in another order); the bias's gradient is the same sum.
With `relu`, the ReLU after the layer is oneDNN's post-op on the product (exactly relu of it: no extra pass
over the output, no autograd node of its own); its backward is ReLU's (`threshold_backward`). On an Intel
CPU with AVX-512, MKL's own kernels are AVX-512 too: there the two are about as fast (not measured).

`MLP` is an nn.Sequential of nn.Linear and activation modules (the same parameters, names and
initialisation) whose forward runs every Linear through `linear`, fused with a ReLU right after it.

It takes the oneDNN path only for float32 tensors on an x86 CPU, with PyTorch built with oneDNN, for weights of
at least MIN_WEIGHTS elements (below that oneDNN's per-call cost outweighs its kernel), and never while
tracing or compiling (an export records plain `F.linear`); everything else is `F.linear`. No double
backward.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

MIN_WEIGHTS = 4096  # a 256 x 23 first layer is faster through oneDNN, a 256 -> 1 head is not
ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))  # measured on x86 only


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             post: str = "none") -> torch.Tensor:
    """x @ weight.T (+ bias), then oneDNN's post-op `post` ("none", "relu"); x 2-D; either operand may be a
    transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post, [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = _product(x2, weight, bias, "relu" if relu else "none")
        ctx.save_for_backward(x2, weight, out if relu else None)
        ctx.input_shape = x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2, weight, out = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        if out is not None:
            g2 = torch.ops.aten.threshold_backward(g2, out, 0)
        grad_x = _product(g2, weight.t()).view(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_w = _product(g2.t(), x2.t()) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           relu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias) (then F.relu with `relu`), its products through oneDNN where that is faster
    (the module's docstring)."""
    if (ONEDNN and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and weight.numel() >= MIN_WEIGHTS):
        return _OneDNNLinear.apply(x, weight, bias, relu)
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


class MLP(nn.Sequential):
    """nn.Sequential whose Linear layers compute through `linear`, each fused with a ReLU module after it.
    `weight_grads` False: gradients reach the input but not the layers' weights and biases (a loss that
    does not train this net makes none)."""

    def forward(self, x: torch.Tensor, weight_grads: bool = True) -> torch.Tensor:
        layers, i = list(self), 0
        while i < len(layers):
            layer = layers[i]
            if not isinstance(layer, nn.Linear):
                x, i = layer(x), i + 1
                continue
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            weight, bias = layer.weight, layer.bias
            if not weight_grads:
                weight, bias = weight.detach(), None if bias is None else bias.detach()
            x, i = linear(x, weight, bias, relu), i + (2 if relu else 1)
        return x
