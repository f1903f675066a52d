"""The network: exact parameter count, receptive field, causality inside the window."""
from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from models.tcn import TCN, build_tcn, count_parameters, expected_parameters, receptive_field


def test_default_parameter_count_is_58401():
    net = build_tcn(ModelConfig(), n_features=12)
    # 4,704 + 6,208 + 20,672 + 24,704 (blocks, incl. 1x1 residual convs 12->32 and 32->64) + 2,113 (head)
    assert count_parameters(net) == expected_parameters(12, [32, 32, 64, 64], 3, 32) == 58401


@pytest.mark.parametrize("channels, k, head", [([8, 16], 2, 4), ([5, 5, 7], 5, 16), ([12, 12], 3, 1)])
def test_parameter_count_matches_closed_form(channels, k, head):
    net = TCN(n_features=12, channels=channels, kernel_size=k, dilations=[1] * len(channels), head_units=head)
    assert count_parameters(net) == expected_parameters(12, channels, k, head)


def test_receptive_field_formula_and_measured():
    assert receptive_field(3, [1, 2, 4, 8]) == 61
    torch.manual_seed(0)
    net = build_tcn(ModelConfig(), n_features=12).eval()
    x = torch.randn(16, 100, 12, requires_grad=True)
    net.conv_features(x)[:, :, -1].sum().backward()
    touched = (x.grad.abs().sum(dim=(0, 2)) > 0).nonzero().flatten()
    # the last output step depends on exactly the last 61 input steps
    assert touched.min().item() == 100 - 61 and touched.max().item() == 99
    assert len(touched) == 61


def test_output_shape_and_window_independence_of_code():
    net = build_tcn(ModelConfig(), n_features=12).eval()
    assert net(torch.randn(5, 64, 12)).shape == (5,)
    assert net(torch.randn(1, 64, 12)).shape == (1,)


@pytest.mark.parametrize("j", [0, 10, 37, 63])
def test_causal_inside_the_window(j):
    torch.manual_seed(1)
    net = build_tcn(ModelConfig(), n_features=12).eval()
    x = torch.randn(4, 64, 12)
    y = x.clone()
    y[:, j, :] += torch.randn(4, 12) * 3.0
    with torch.no_grad():
        a, b = net.conv_features(x), net.conv_features(y)
    # steps before j are bit-identical, step j itself changes
    assert torch.equal(a[:, :, :j], b[:, :, :j])
    assert not torch.allclose(a[:, :, j], b[:, :, j])
