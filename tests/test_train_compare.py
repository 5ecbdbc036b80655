"""ViT vs CNN on the Train page: the CNN's own FLOP count in the time estimate, and the view that
trains both on one budget, one after the other, with their curves on one chart."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vit_core import costs, runs
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


# ---- the page: ViT, then CNN, on one budget ---------------------------------------------------

from tests._tiny_data import wait_for  # noqa: E402
from tests.test_train_page import open_page, poll, set_tiny, texts  # noqa: E402
from tests.test_train_page import tiny as tiny  # noqa: E402, F401  (the fixture)


def _chart(at, key: str) -> dict:
    import json

    return json.loads(next(c for c in at.get("plotly_chart") if key in c.proto.id).proto.spec)


def _table(at) -> dict[str, list]:
    df = at.dataframe[0].value
    return {c: list(df[c]) for c in df.columns}


def test_vit_then_cnn_on_one_budget_one_chart_results_side_by_side(tiny):
    at = open_page()
    set_tiny(at, epochs=2)  # 72 images / batch 8: 18 steps each
    at.selectbox(key="train_images").set_value(0).run()
    help_text = at.button(key="train_compare_start").proto.help
    assert "ViT about" in help_text and "CNN (ResNet) about" in help_text
    at.button(key="train_compare_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    comp = at.session_state["_train_compare"]
    vit = at.session_state["train_run"]
    assert comp.runs == {"vit": vit} and vit.cfg.arch == "vit"
    assert "waiting; it starts when the ViT has finished" in texts(at, "markdown")

    # the ViT finishes while another page is open: that page's next draw starts the CNN as the session's one run
    wait_for(lambda: vit.view().status == "finished" and not vit.alive, timeout=120, what="the ViT to finish")
    assert "resnet" not in comp.runs
    at.switch_page("pages/1_overview.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "resnet" in comp.runs
    at.switch_page("pages/7_train.py").run()
    cnn = comp.runs["resnet"]
    assert at.session_state["train_run"] is cnn and vit.view().status == "finished"
    a, b = vit.cfg, cnn.cfg
    assert b.arch == "resnet" and a.replace(arch="resnet") == b  # the same budget: only arch differs
    poll(at, lambda: cnn.view().status == "finished" and ("ahead" in texts(at, "markdown") or "level" in texts(at, "markdown")), timeout=120, what="the CNN to finish and the verdict")  # fmt: skip

    fig = _chart(at, "train_compare_curves")
    names = {t["name"] for t in fig["data"]}
    assert {"ViT: train loss", "ViT: test accuracy", "CNN (ResNet): train loss", "CNN (ResNet): test accuracy"} <= names
    for label, run in (("ViT", vit), ("CNN (ResNet)", cnn)):
        v = run.view()
        acc = next(t for t in fig["data"] if t["name"] == f"{label}: test accuracy")
        assert [round(y, 6) for y in _values(acc["y"])] == [round(e.acc * 100, 6) for e in v.evals]
        assert _values(acc["x"]) == [e.step * v.config.batch_size for e in v.evals]

    table = _table(at)
    vv, cv = vit.view(), cnn.view()
    row = table[""].index("Test accuracy (all test images)")
    assert table["ViT"][row] == f"{vv.final.acc:.1%}" and table["CNN (ResNet)"][row] == f"{cv.final.acc:.1%}"
    row = table[""].index("Forward FLOPs per image")
    assert table["CNN (ResNet)"][row] == f"{costs.cnn_forward_flops(cnn.cfg.model_config(3)) / 1e6:,.1f} M"
    assert table["ViT"][row] == f"{costs.forward_flops(vit.cfg, 3) / 1e6:,.1f} M"
    row = table[""].index("Parameters")
    assert table["ViT"][row] == f"{vv.params:,}" and table["CNN (ResNet)"][row] == f"{cv.params:,}"
    assert cv.params == ResNet(cnn.cfg.model_config(3)).num_params()
    assert "A CNN has no position embeddings" in texts(at, "caption")  # the snapshot note says what a CNN's shows
    row = table[""].index("Training images")
    assert table["ViT"][row] == table["CNN (ResNet)"][row] == "72"
    verdict = texts(at, "markdown")
    assert f"the ViT {vv.final.acc * 100:.1f}%, the CNN {cv.final.acc * 100:.1f}%" in verdict

    at.button(key="train_compare_close").click().run()
    assert "_train_compare" not in at.session_state
    assert not [c for c in at.get("plotly_chart") if "train_compare_curves" in c.proto.id]


def _values(v) -> list:
    """A plotly JSON array: a list, or numpy's base64 form ({'dtype', 'bdata'})."""
    if isinstance(v, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def test_a_stopped_vit_leaves_the_cnn_to_the_user_and_one_run_at_a_time_holds(tiny):
    at = open_page()
    set_tiny(at, epochs=200)  # long: stopped mid-run
    at.button(key="train_compare_start").click().run()
    comp = at.session_state["_train_compare"]
    vit = comp.runs["vit"]
    poll(at, lambda: vit.view().step > 0, what="the ViT's first steps")
    assert at.session_state["train_run"] is vit and vit.view().active
    vit.stop()
    poll(at, lambda: not vit.alive and vit.view().done, timeout=60, what="the ViT to stop")
    at.run()
    assert "resnet" not in comp.runs  # not started by itself
    warn = texts(at, "warning")
    assert "CNN (ResNet)" in warn and "not started" in warn and "stopped" in warn
    at.button(key="train_compare_next").click().run()
    assert not at.exception, [e.message for e in at.exception]
    cnn = comp.runs["resnet"]
    assert cnn.cfg.arch == "resnet" and at.session_state["train_run"] is cnn
    # one run of this session at a time: the ViT's thread has ended, the CNN is the only one active
    at.run()
    assert [r for r in runs.active_runs() if r in (vit, cnn)] == [cnn]
    assert not [b for b in at.button if b.key in ("train_compare_next", "train_compare_start", "train_start")]
    cnn.stop()
    cnn.join(60)


# ---- the chart -------------------------------------------------------------------------------


def test_comparison_chart_puts_runs_of_two_batch_sizes_on_one_images_axis():
    from vit_plots.run_comparison import RunCurves, run_comparison_figure

    a = RunCurves("ViT", 64, [1, 2, 3], [2.0, 1.5, 1.0], [3], [1.2], [0.4])
    b = RunCurves("CNN (ResNet)", 32, [1, 2, 3, 4, 5, 6], [2.0] * 6, [6], [1.1], [0.5])
    fig = run_comparison_figure([a, b], total_images=192)
    acc = {t.name: t for t in fig.data if t.name.endswith("test accuracy")}
    assert list(acc["ViT: test accuracy"].x) == [192] == list(acc["CNN (ResNet): test accuracy"].x)
    assert list(acc["ViT: test accuracy"].y) == [40.0] and list(acc["CNN (ResNet): test accuracy"].y) == [50.0]
    assert fig.data[0].line.color != fig.data[3].line.color  # one colour per run
    assert list(fig.layout.xaxis.range) == [0, 192]
    with pytest.raises(ValueError, match="one value per step"):
        run_comparison_figure([RunCurves("x", 8, [1, 2], [1.0])])
    with pytest.raises(ValueError, match="no runs"):
        run_comparison_figure([])
