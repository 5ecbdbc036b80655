"""Which device runs the model (`vit_core.devices`), and the app's tensors following it.

There is no GPU on the test machine. The choice is tested with the availability checks
monkeypatched. That every tensor the app hands the model is on the model's device, and that
every result comes back to the CPU, is tested with the model on PyTorch's "meta" device as a
stand-in accelerator: an op that mixes a meta tensor with a CPU tensor fails exactly as one
that mixes CUDA and CPU tensors does ("Tensor on device meta is not on the expected device
cpu"), and `numpy()` of a meta tensor fails as `numpy()` of a CUDA tensor does. Only one thing
differs: a meta tensor holds no values, so its copy to the CPU (`.cpu()`, `float()`, `.item()`)
is patched to give zeros of the right shape. The CPU path itself runs with nothing patched.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vit_core import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, VisionTransformer, ViTConfig, devices
from vit_core import analysis as A
from vit_core.devices import DEVICE_ENV, device_label, model_device, resolve_device, server_device

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gpus(monkeypatch):
    """Set what this process can use: gpus(cuda=..., mps=..., cuda_count=...)."""

    def set_(cuda: bool = False, mps: bool = False, cuda_count: int = 1) -> None:
        monkeypatch.setattr(devices, "cuda_available", lambda: cuda)
        monkeypatch.setattr(devices, "mps_available", lambda: mps)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)

    return set_


# ---- the choice ----


def test_auto_prefers_cuda_then_mps_then_cpu(gpus):
    gpus(cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    gpus(cuda=False, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    gpus(cuda=False, mps=False)
    assert resolve_device("auto") == torch.device("cpu")


def test_training_resolves_devices_with_the_same_function(gpus):
    from vit_core import train

    assert train.resolve_device is devices.resolve_device
    gpus(cuda=False, mps=True)
    assert train.resolve_device("auto") == torch.device("mps")
    # anything but "auto" is taken as given, as training always did
    assert train.resolve_device("cpu") == torch.device("cpu")
    assert train.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_training_auto_sees_torchs_own_availability(monkeypatch):
    """The real checks are torch's: patched there, training's "auto" follows (no GPU needed)."""
    from vit_core.train import resolve_device as train_resolve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_resolve("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert train_resolve("auto") == torch.device("cpu")


@pytest.mark.parametrize("setting", [None, "", "auto", "AUTO", " auto "])
def test_the_server_setting_defaults_to_auto(gpus, setting):
    env = {} if setting is None else {DEVICE_ENV: setting}
    gpus(cuda=True)
    assert server_device(env) == devices.DeviceChoice(torch.device("cuda"), "auto", "")
    gpus(cuda=False)
    assert server_device(env).device == torch.device("cpu") and not server_device(env).note


def test_cpu_forces_the_cpu_even_with_a_gpu(gpus):
    gpus(cuda=True, mps=True)
    choice = server_device({DEVICE_ENV: "cpu"})
    assert choice.device == torch.device("cpu") and choice.note == ""


@pytest.mark.parametrize(
    ("setting", "device"),
    [("cuda", torch.device("cuda")), ("cuda:1", torch.device("cuda", 1)), ("mps", torch.device("mps"))],
)
def test_an_available_device_is_used(gpus, setting, device):
    gpus(cuda=True, mps=True, cuda_count=2)
    assert server_device({DEVICE_ENV: setting}) == devices.DeviceChoice(device, setting, "")


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("gpu", "'gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "'cuda:x' is not one of"),
        ("mps:0", "'mps:0' is not one of"),
        ("cpu:0", "'cpu:0' is not one of"),
        ("cuda", "sees no CUDA GPU"),
        ("mps", "Apple's MPS is not available"),
        ("cuda:2", "sees 2 CUDA GPU(s), numbered from 0"),
    ],
)
def test_a_bad_or_unavailable_setting_falls_back_to_the_cpu_and_says_why(gpus, setting, says):
    gpus(cuda=setting == "cuda:2", mps=False, cuda_count=2)
    choice = server_device({DEVICE_ENV: setting})
    assert choice.device == torch.device("cpu")
    assert says in choice.note
    assert "the model runs on the CPU" in choice.note
    assert choice.setting == setting


def test_device_labels(monkeypatch):
    assert device_label("cpu", 1) == "CPU (1 thread)"
    assert device_label(torch.device("cpu"), 2) == "CPU (2 threads)"
    assert device_label("cpu") == f"CPU ({torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)})"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert device_label("cuda") == "CUDA: NVIDIA H200"
    assert device_label("mps") == "Apple MPS"


def test_model_device_follows_the_parameters():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert model_device(torch.nn.Identity()) == torch.device("cpu")  # nothing to follow


def test_the_app_loads_models_onto_the_server_device(monkeypatch):
    from ui import models

    monkeypatch.setattr(models, "server_device", lambda: devices.DeviceChoice(torch.device("meta"), "test"))
    m = models.on_server_device(torch.nn.Linear(2, 2))
    assert model_device(m) == torch.device("meta")
    monkeypatch.setattr(models, "server_device", lambda: devices.DeviceChoice(torch.device("cpu"), "cpu"))
    assert model_device(models.on_server_device(m.to_empty(device="cpu"))) == torch.device("cpu")


# ---- the app's tensors follow the model's device ----


def _small_vit() -> VisionTransformer:
    cfg = ViTConfig(
        img_size=32, patch_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, name="devices test ViT",
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return VisionTransformer(cfg, list(CIFAR10_CLASSES)).eval()


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray((rng.random((40, 44, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _current(model: VisionTransformer, model_id: str, seed: int):
    from ui import compute
    from ui.images import image_choice
    from ui.models import LoadedModel
    from ui.selection import Current

    loaded = LoadedModel(model, model_id, "test", "devices test ViT")
    image = image_choice("noise.png", _png(seed), "upload")
    return Current(loaded, image, compute.prepare(loaded, image))


def _every_analysis(cur) -> dict:
    """Every function of ui.compute that runs the model or reads its weights, with page-like arguments."""
    from ui import compute

    return {
        "probs": cur.prep.probs,
        "filters": compute.filters(cur, 4),
        "position_similarity": compute.position_similarity(cur),
        "sample_mean_distance": compute.sample_mean_distance(cur),
        "conv_vs_linear": compute.conv_vs_linear(cur),
        "class_map": compute.class_map(cur, 3),
        "head_steps": compute.head_steps(cur, 1, 1, 0),
        "logit_lens": compute.logit_lens(cur),
        "occluded_mean": compute.occluded(cur, (0, 5), "mean"),
        "occluded_drop": compute.occluded(cur, (0, 5), "drop"),
        "shuffled": compute.shuffled(cur, 7),
        "token_views": compute.token_views(cur),
        "rollout": compute.rollout(cur, "mean", 0.0, 0),
        "head_maps": compute.head_maps(cur),
    }


def _arrays(result) -> list:
    if isinstance(result, dict):
        return [a for v in result.values() for a in _arrays(v)]
    return [result]


def test_on_the_cpu_the_analyses_give_what_the_library_gives():
    """The CPU path is unchanged: the app's results equal the library's own, value for value."""
    model = _small_vit()
    cur = _current(model, "devices-test:cpu", seed=21)
    x = cur.prep.x
    assert x.device == torch.device("cpu") and cur.prep.trace.attentions.device == torch.device("cpu")
    with torch.no_grad():
        ref = model.trace(x)
    np.testing.assert_array_equal(cur.prep.probs, ref.probs[0].numpy())
    torch.testing.assert_close(cur.prep.trace.hidden_states, ref.hidden_states, rtol=0, atol=0)
    out = _every_analysis(cur)
    np.testing.assert_array_equal(out["logit_lens"], A.logit_lens(model, ref)[0].numpy())
    np.testing.assert_array_equal(out["conv_vs_linear"]["conv"], A.conv_vs_linear(model, x)["conv"][0].numpy())
    for name, got in A.head_computation(model, ref, 1, 1, 0).items():
        np.testing.assert_array_equal(out["head_steps"][name], got)
    with torch.no_grad():
        np.testing.assert_array_equal(
            out["occluded_drop"]["probs"], A.occlude_patches(model, x, [0, 5], "drop").softmax(-1)[0].numpy()
        )
    with torch.enable_grad():
        t = model.trace(x, target=3)
    np.testing.assert_array_equal(out["class_map"], A.class_attention_map_from_trace(t, 0)[0].detach().numpy())
    # and the probabilities add up: real numbers, not zeros
    assert out["logit_lens"].shape == (3, 10)
    np.testing.assert_allclose(out["logit_lens"].sum(-1), 1.0, rtol=1e-5)


def _copying_meta_gives_zeros(monkeypatch) -> None:
    """A meta tensor's copy to the CPU gives zeros of its shape and dtype (it holds no values)."""
    cpu, to = torch.Tensor.cpu, torch.Tensor.to
    to_float, to_int, item, to_bool = (
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.item,
        torch.Tensor.__bool__,
    )

    def zeros(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(t.shape, dtype=t.dtype)

    def fake_to(self, *args, **kwargs):
        try:
            return to(self, *args, **kwargs)
        except NotImplementedError:  # "Cannot copy out of meta tensor": a copy to the CPU
            return to(zeros(self), *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: zeros(self) if self.is_meta else cpu(self, *a, **k))
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: 0.0 if self.is_meta else to_float(self))
    monkeypatch.setattr(torch.Tensor, "__int__", lambda self: 0 if self.is_meta else to_int(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: 0 if self.is_meta else item(self))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: False if self.is_meta else to_bool(self))


@pytest.fixture
def meta_copies_to_zeros(monkeypatch):
    _copying_meta_gives_zeros(monkeypatch)


def _record_model_inputs(model: torch.nn.Module) -> list[tuple[str, torch.device]]:
    """(module name, device) of every tensor any module of `model` is called with."""
    seen: list[tuple[str, torch.device]] = []
    for name, module in model.named_modules():

        def hook(mod, args, kwargs, name=name):
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor):
                    seen.append((name, a.device))

        module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_every_tensor_the_app_hands_the_model_is_on_its_device(meta_copies_to_zeros):
    model = _small_vit().to("meta")
    seen = _record_model_inputs(model)
    cur = _current(model, "devices-test:meta", seed=22)
    # what the pages keep and plot is on the CPU
    assert cur.prep.x.device == torch.device("cpu")
    assert all(t.device == torch.device("cpu") for t in (cur.prep.trace.attentions, cur.prep.trace.hidden_states))
    out = _every_analysis(cur)  # a CPU tensor reaching a meta weight would raise here
    assert seen and {d for _, d in seen} == {torch.device("meta")}, [s for s in seen if s[1].type != "meta"]
    called = {n for n, _ in seen}
    assert {"", "patch_embed", "blocks.0.attn", "head"} <= called  # the whole model ran, not just part of it
    for name, result in out.items():
        for a in _arrays(result):
            assert not isinstance(a, torch.Tensor) or a.device.type == "cpu", name


def test_a_result_left_on_the_device_is_caught(meta_copies_to_zeros):
    """The check above can fail: an input left on the CPU, or a result left on the device, raises."""
    model = _small_vit().to("meta")
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="not on the expected device"):
        model(x)
    with pytest.raises((RuntimeError, NotImplementedError, TypeError)):
        model(x.to("meta")).numpy()


def test_the_lab_hands_the_model_tensors_on_its_device(meta_copies_to_zeros):
    """The faithfulness lab (maps, curves, cascade, knockout, patch lens, the sample-image runs)."""
    from ui import lab

    model = _small_vit().to("meta")
    seen = _record_model_inputs(model)
    cur = _current(model, "devices-test:lab-meta", seed=23)
    out = {
        "maps": lab.maps(cur, 3, "mean", 0.0, 0),
        "curves": lab.curves(cur, 3, "mean", 0.0, 0, 2, 1),
        "cascade": lab.cascade(cur, 3, "mean", 0.0, 0),
        "knocked": lab.knocked(cur, ((0, 1), (1, 0)), 3, "mean", 0.0, 0),
        "patch_lens": lab.patch_lens(cur),
        "sample_summary": lab.sample_summary(cur, "mean", 0.0, 0, 2, 1, 2),
        "sample_importance": lab.sample_importance(cur, 2),
    }
    assert {d for _, d in seen} == {torch.device("meta")}, [s for s in seen if s[1].type != "meta"]
    assert out["patch_lens"].shape == (3, 16, 10) and out["knocked"]["probs"].shape == (10,)


def test_the_lessons_answers_hand_the_model_tensors_on_its_device(meta_copies_to_zeros):
    """Every question of the bundled lessons, asked as the Lessons panel asks it (`ui.lessons.truth`).

    On meta a branch on a value always goes one way, so questions that need non-zero position
    embeddings or defined attention distances are skipped here (the answer is the reason), not checked."""
    from ui import lessons
    from vit_core.analysis.questions import Answer

    model = _small_vit().to("meta")
    seen = _record_model_inputs(model)
    cur = _current(model, "devices-test:lessons-meta", seed=24)
    asked = set()
    for lesson in lessons.all_lessons().values():
        for i, step in enumerate(lesson.steps):
            if step.question is not None and isinstance(lessons.truth(lesson, i, cur), Answer):
                asked.add(step.question.kind)
    assert {"number", "click_patch", "guess_probability", "yes_no_shuffle"} <= asked
    assert {d for _, d in seen} == {torch.device("meta")}


# ---- the sidebar says which device runs the model ----


def _sidebar_captions(monkeypatch, setting: str | None) -> list:
    from streamlit.testing.v1 import AppTest

    if setting is None:
        monkeypatch.delenv(DEVICE_ENV, raising=False)
    else:
        monkeypatch.setenv(DEVICE_ENV, setting)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["model_choice"] = "untrained"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return [c for c in at.sidebar.caption if c.value.startswith("Model runs on:")]


def test_the_sidebar_says_which_device_runs_the_model(monkeypatch):
    (line,) = _sidebar_captions(monkeypatch, None)
    assert line.value == "Model runs on: CPU (1 thread)"  # the untrained CIFAR ViT: one thread (vit_core.threads)
    assert "VIT_EXPLORER_DEVICE" in line.help


def test_a_setting_the_server_cannot_meet_is_said_and_the_app_runs_on_the_cpu(monkeypatch):
    (line,) = _sidebar_captions(monkeypatch, "gpu")
    assert line.value == "Model runs on: CPU (1 thread) · VIT_EXPLORER_DEVICE=gpu could not be used"
    assert "'gpu' is not one of auto, cpu, cuda, cuda:N, mps: the model runs on the CPU" in line.help


def test_training_runs_of_this_server_follow_the_device_setting(monkeypatch):
    """VIT_EXPLORER_DEVICE=cpu keeps a GPU server's in-app training on the CPU too; "auto" keeps
    choosing the GPU; a run config that names its own device keeps it."""
    from vit_core import devices
    from vit_core.run_backend import local_device_config
    from vit_core.train import TrainConfig

    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    cfg = TrainConfig()
    assert cfg.device == "auto"
    assert local_device_config(cfg, {"VIT_EXPLORER_DEVICE": "cpu"}).device == "cpu"
    assert local_device_config(cfg, {}).device == "cuda"
    assert local_device_config(cfg, {"VIT_EXPLORER_DEVICE": "gpu"}).device == "cpu"  # a bad value: the CPU
    assert local_device_config(cfg.replace(device="cuda:1"), {"VIT_EXPLORER_DEVICE": "cpu"}).device == "cuda:1"
