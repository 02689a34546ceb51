"""hotprune.learning.fast_linear: F.linear's values and gradients through oneDNN, F.linear itself where it
does not apply (small weights, float64, tracing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hotprune.learning import fast_linear
from hotprune.learning.fast_linear import linear
from hotprune.learning.policy import mlp

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not fast_linear.ONEDNN, reason="PyTorch built without oneDNN")


def values_and_grads(fn, x, weight, bias, upstream):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = fn(x, weight, bias)
    out.backward(upstream)
    return out.detach(), x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear and relu"])
@pytest.mark.parametrize("shape", [(256, 96), (4, 64, 96)], ids=["rows", "batch of rows"])
def test_linear_is_f_linear_in_values_and_all_three_gradients(shape, relu):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    weight, bias = torch.randn(128, 96, generator=gen) / 10, torch.randn(128, generator=gen)
    upstream = torch.randn(*shape[:-1], 128, generator=gen)
    got = values_and_grads(lambda *a: linear(*a, relu=relu), x, weight, bias, upstream)
    want = values_and_grads(lambda *a: F.relu(F.linear(*a)) if relu else F.linear(*a), x, weight, bias, upstream)
    assert (got[0] == 0).any() == relu
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
    graph = torch.jit.trace(mlp([64, 128, 1], "relu", fast=True), x).graph  # as `hotprune export` would
    assert "aten::linear" in str(graph) and "mkldnn" not in str(graph)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_a_fast_mlp_is_its_plain_twin_and_without_weight_gradients_makes_none(activation):
    torch.manual_seed(3)
    fast = mlp([23, 96, 96, 1], activation, fast=True)
    plain = mlp([23, 96, 96, 1], activation)
    plain.load_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    x = torch.randn(256, 23)
    out = fast(x)
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    plain(x).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-4, msg=name)
    fast.zero_grad()
    x.requires_grad_()
    fast(x, weight_grads=False).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in fast.parameters())
