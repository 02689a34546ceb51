"""hotprune.learning.fast_linear: F.linear's values and gradients through oneDNN, F.linear itself where it
does not apply (small weights, float64, tracing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hotprune.learning import fast_linear
from hotprune.learning.fast_linear import Linear, linear

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not fast_linear.ONEDNN, reason="PyTorch built without oneDNN")


def values_and_grads(fn, x, weight, bias, upstream):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = fn(x, weight, bias)
    out.backward(upstream)
    return out.detach(), x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("shape", [(256, 96), (4, 64, 96)], ids=["rows", "batch of rows"])
def test_linear_is_f_linear_in_values_and_all_three_gradients(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    weight, bias = torch.randn(128, 96, generator=gen) / 10, torch.randn(128, generator=gen)
    upstream = torch.randn(*shape[:-1], 128, generator=gen)
    got = values_and_grads(linear, x, weight, bias, upstream)
    want = values_and_grads(F.linear, x, weight, bias, upstream)
    assert got[0].data_ptr() != want[0].data_ptr()
    for name, g, w in zip(("out", "x.grad", "weight.grad", "bias.grad"), got, want):
        assert g.shape == w.shape and g.is_contiguous(), name
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4, msg=name)


def test_transposed_and_sliced_operands_are_read_as_they_are():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 256, generator=gen).t()  # a transposed view
    stacked = torch.randn(2, 128, 96, generator=gen)
    out = linear(x, stacked[1], None)  # a weight that is a slice of a bigger tensor
    torch.testing.assert_close(out, F.linear(x, stacked[1]), rtol=1e-5, atol=1e-4)


def test_small_weights_float64_and_traced_graphs_are_f_linear_exactly():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 64, generator=gen)
    small = torch.randn(1, 64, generator=gen)  # under MIN_WEIGHTS
    assert torch.equal(linear(x, small), F.linear(x, small))
    big = torch.randn(128, 64, generator=gen, dtype=torch.float64)
    assert torch.equal(linear(x.double(), big), F.linear(x.double(), big))
    layer = Linear(64, 128)
    graph = torch.jit.trace(layer, x).graph  # what `hotprune export --format torchscript` records
    assert "aten::linear" in str(graph) and "mkldnn" not in str(graph)
