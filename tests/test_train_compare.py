"""ViT vs CNN on the Train page: the CNN's own FLOP count in the time estimate, and the view that
trains both on one budget, one after the other, with their curves on one chart."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vit_core import costs
from vit_core.cnn import CNN_PRESETS, CNNConfig, ResNet
from vit_core.train import TrainConfig

# ---- the CNN's FLOPs -------------------------------------------------------------------------

TINY = CNNConfig(img_size=(8, 8), in_chans=3, num_classes=4, stem_width=2, widths=(2, 4), blocks=(1, 1))


def test_cnn_flops_match_a_hand_count_of_a_tiny_resnet():
    # multiply-adds, layer by layer: output elements x input channels x kernel area
    stem = 8 * 8 * 2 * 3 * 9  # 3x3, 3 -> 2 channels, 8x8 out
    stage1 = 2 * (8 * 8 * 2 * 2 * 9)  # two 3x3 convs, 2 -> 2, 8x8
    stage2 = 4 * 4 * 4 * 2 * 9 + 4 * 4 * 4 * 4 * 9 + 4 * 4 * 4 * 2  # stride 2: 3x3 2->4, 3x3 4->4, 1x1 shortcut 2->4
    head = 4 * 4  # Linear 4 -> 4
    assert stem + stage1 + stage2 + head == 11664
    assert costs.cnn_forward_flops(TINY) == 2 * 11664


@pytest.mark.parametrize("preset", sorted(CNN_PRESETS))
def test_cnn_flops_match_torchs_flop_counter(preset):
    """PyTorch's own counter, on a real forward pass, counts convolutions and matrix products alike."""
    cfg = CNN_PRESETS[preset]
    model = ResNet(cfg).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, *cfg.img_size))
    assert costs.cnn_forward_flops(cfg) == fc.get_total_flops()


def test_a_cnn_runs_estimate_uses_the_cnns_flops_and_its_own_speed():
    cnn = TrainConfig(arch="resnet", cnn_preset="quick")
    vit = cnn.replace(arch="vit")
    assert costs.forward_flops(cnn, 10) == costs.cnn_forward_flops(cnn.model_config(10))
    assert costs.forward_flops(cnn, 10) != costs.forward_flops(vit, 10)  # no longer the ViT's count
    speed = costs.calibrate(1, arch="resnet")
    assert speed is costs.calibrate(1, arch="resnet")  # measured once
    assert speed is not costs.calibrate(1) and speed.flops_per_s > 0
    assert costs.seconds_per_image(cnn, speed, 10) == pytest.approx(
        3 * costs.forward_flops(cnn, 10) / speed.flops_per_s
    )
    with pytest.raises(ValueError, match="arch must be"):
        costs.calibrate(1, arch="mlp")
