"""vit_core.threads: the thread count the app uses for a model's inference."""

from __future__ import annotations

import threading

import torch

from vit_core import VisionTransformer, ViTConfig
from vit_core.threads import _DEFAULT_THREADS, forward_gflop, inference_threads, use_inference_threads


def _meta(**kw) -> VisionTransformer:
    with torch.device("meta"):  # shapes only: no memory for ViT-L's weights
        return VisionTransformer(ViTConfig(**kw))


def test_forward_gflop_counts_params_times_tokens() -> None:
    b16 = _meta()
    assert 33.5 < forward_gflop(b16) < 34.6  # 86.6 M params x 197 tokens x 2
    big_input = _meta(img_size=448)
    extra = sum(p.numel() for p in big_input.parameters()) - sum(p.numel() for p in b16.parameters())
    assert extra == (785 - 197) * 768  # only the position embeddings grow
    assert forward_gflop(big_input) / forward_gflop(b16) == (
        sum(p.numel() for p in big_input.parameters()) * 785 / (sum(p.numel() for p in b16.parameters()) * 197)
    )


def test_one_thread_up_to_vit_b_all_cores_above() -> None:
    cifar = _meta(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=4, mlp_ratio=2.0, num_classes=10)
    assert inference_threads(cifar) == 1
    assert inference_threads(_meta()) == 1  # ViT-B/16
    large = _meta(embed_dim=1024, depth=24, num_heads=16)  # ViT-L/16: about 120 GFLOP
    assert forward_gflop(large) > 100 and inference_threads(large) == max(1, _DEFAULT_THREADS)


def test_use_inference_threads_sets_the_calling_thread_only() -> None:
    before = torch.get_num_threads()
    large = _meta(embed_dim=1024, depth=24, num_heads=16)
    seen: dict[str, int] = {}

    def script_run() -> None:  # what a Streamlit script thread does at the start of a run
        torch.set_num_threads(max(1, _DEFAULT_THREADS))
        seen["returned"] = use_inference_threads(_meta())
        seen["small"] = torch.get_num_threads()
        use_inference_threads(large)
        seen["large"] = torch.get_num_threads()

    t = threading.Thread(target=script_run)
    t.start()
    t.join()
    assert seen == {"returned": 1, "small": 1, "large": max(1, _DEFAULT_THREADS)}
    assert torch.get_num_threads() == before  # the main thread kept its own count


def test_training_threads_setting(monkeypatch) -> None:
    from vit_core.threads import TRAIN_THREADS_ENV, training_threads

    monkeypatch.delenv(TRAIN_THREADS_ENV, raising=False)
    assert training_threads() == max(1, _DEFAULT_THREADS)
    monkeypatch.setenv(TRAIN_THREADS_ENV, "1")
    assert training_threads() == 1
    monkeypatch.setenv(TRAIN_THREADS_ENV, "0")
    assert training_threads() == 1
    monkeypatch.setenv(TRAIN_THREADS_ENV, "two")
    assert training_threads() == max(1, _DEFAULT_THREADS)
