"""Faithfulness lab, head knockout, per-patch logit lens: each checked against an independent
computation written here with explicit loops (no code shared with vit_core.analysis)."""

from __future__ import annotations

import math

import pytest
import torch

from vit_core import VisionTransformer, ViTConfig
from vit_core.analysis import (
    agreement_matrix,
    curve_area,
    deletion_curve,
    deletion_insertion_curves,
    head_importance,
    head_output_means,
    heads_knocked_out,
    insertion_curve,
    knockout_heads,
    map_agreement,
    patch_logit_lens,
    random_saliencies,
    randomise_cascade,
    saliency_order,
    step_fractions,
)

# ---------------------------------------------------------------- tiny models, built here


def tiny_model(seed: int = 0, **changes) -> VisionTransformer:
    """A small ViT whose every parameter is moved off its initial value (a stand-in for training)."""
    kw = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    kw.update(changes)
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def image(seed: int = 1, size: tuple[int, int] = (16, 16)) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- hand-written references


def ref_order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def ref_hide(x: torch.Tensor, patches: list[int], P: int) -> torch.Tensor:
    """Paint each listed patch with the image's own per-channel mean colour."""
    out = x.clone()
    gw = x.shape[3] // P
    for c in range(x.shape[1]):
        colour = float(x[0, c].mean())
        for p in patches:
            r, col = divmod(p, gw)
            out[0, c, r * P : r * P + P, col * P : col * P + P] = colour
    return out


def ref_curve(model, x, scores, target, k, insertion: bool) -> list[float]:
    n = len(scores)
    order = ref_order(scores)
    probs = []
    step = 0
    while True:
        done = min(step * k, n)
        hidden = order[done:] if insertion else order[:done]
        with torch.no_grad():
            logits = model(ref_hide(x, hidden, model.cfg.patch_size))
        probs.append(float(torch.softmax(logits.double(), -1)[0, target]))
        if done == n:
            return probs
        step += 1


def layer_norm(t: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mu = t.mean(-1, keepdim=True)
    var = ((t - mu) ** 2).mean(-1, keepdim=True)
    return (t - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_forward(model, x, knocked=(), means=None, capture=None) -> torch.Tensor:
    """A ViT forward written out (class-token model), zeroing (or mean-filling) knocked-out
    heads' slices before each output projection. `capture[l]` receives the head outputs."""
    cfg = model.cfg
    P, D, H = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    d = D // H
    B, C, Hh, Ww = x.shape
    gh, gw = Hh // P, Ww // P
    w = model.patch_embed.proj.weight.reshape(D, -1)
    patches = []
    for r in range(gh):
        for c in range(gw):
            patches.append(
                x[:, :, r * P : r * P + P, c * P : c * P + P].reshape(B, -1) @ w.T + model.patch_embed.proj.bias
            )
    tokens = torch.cat([model.cls_token.expand(B, 1, D), torch.stack(patches, 1)], 1) + model.pos_embed
    for l, blk in enumerate(model.blocks):
        a = layer_norm(tokens, blk.norm1)
        qkv = a @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        heads_out = []
        for h in range(H):
            q = qkv[..., h * d : (h + 1) * d]
            k = qkv[..., D + h * d : D + (h + 1) * d]
            v = qkv[..., 2 * D + h * d : 2 * D + (h + 1) * d]
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
            heads_out.append(att @ v)
        cat = torch.cat(heads_out, -1)
        if capture is not None:
            capture.setdefault(l, []).append(cat.clone())
        for kl, kh in knocked:
            if kl == l:
                cat[..., kh * d : (kh + 1) * d] = 0.0 if means is None else means[l][:, kh * d : (kh + 1) * d]
        tokens = tokens + cat @ blk.attn.proj.weight.T + blk.attn.proj.bias
        m = layer_norm(tokens, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))
        tokens = tokens + m @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return layer_norm(tokens[:, 0], model.norm) @ model.head.weight.T + model.head.bias


def ref_ranks(v: list[float]) -> list[float]:
    return [1 + sum(u < x for u in v) + (sum(u == x for u in v) - 1) / 2 for x in v]


def ref_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ref_ranks(a), ref_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


# ---------------------------------------------------------------- deletion / insertion


@pytest.mark.parametrize("k", [1, 3, 16, 20])
def test_deletion_and_insertion_match_a_one_forward_per_step_loop(k):
    model, x = tiny_model(), image()
    scores = torch.randn(16, generator=torch.Generator().manual_seed(3))
    target = 2
    dele = deletion_curve(model, x, scores, target, k=k, batch_size=4)
    ins = insertion_curve(model, x, scores, target, k=k, batch_size=4)
    steps = math.ceil(16 / k) + 1
    assert dele.shape == ins.shape == (steps,)
    assert dele.tolist() == pytest.approx(ref_curve(model, x, scores.tolist(), target, k, False), abs=1e-6)
    assert ins.tolist() == pytest.approx(ref_curve(model, x, scores.tolist(), target, k, True), abs=1e-6)
    assert ((dele >= 0) & (dele <= 1)).all() and ((ins >= 0) & (ins <= 1)).all()
    with torch.no_grad():
        p_clean = float(torch.softmax(model(x).double(), -1)[0, target])
    assert float(dele[0]) == pytest.approx(p_clean, abs=1e-6)
    assert float(ins[-1]) == pytest.approx(p_clean, abs=1e-6)
    assert float(dele[-1]) == pytest.approx(float(ins[0]), abs=1e-6)  # both: every patch hidden


def test_curves_on_a_non_square_grid_with_ties_and_a_step_not_dividing_n():
    model, x = tiny_model(img_size=(8, 12)), image(size=(8, 12))  # 2 x 3 = 6 patches
    scores = torch.tensor([[1.0, 2.0], [2.0, 0.0], [1.0, 2.0]]).reshape(6)  # ties: order 1, 2, 5, 0, 4, 3
    for k in (1, 4):
        dele = deletion_curve(model, x, scores.reshape(2, 3), 0, k=k)
        assert dele.shape == (math.ceil(6 / k) + 1,)
        assert dele.tolist() == pytest.approx(ref_curve(model, x, scores.tolist(), 0, k, False), abs=1e-6)
    assert saliency_order(scores).tolist() == ref_order(scores.tolist()) == [1, 2, 5, 0, 4, 3]


def test_many_maps_at_once_equal_one_at_a_time_and_batch_size_does_not_matter():
    model, x = tiny_model(), image()
    maps = torch.cat([torch.randn(3, 16, generator=torch.Generator().manual_seed(4)), random_saliencies(16, 2)])
    dele, ins = deletion_insertion_curves(model, x, maps, 1, k=3, batch_size=5)
    assert dele.shape == ins.shape == (5, 7)
    for m in range(5):
        assert torch.allclose(dele[m], deletion_curve(model, x, maps[m], 1, k=3, batch_size=64), atol=1e-6)
        assert torch.allclose(ins[m], insertion_curve(model, x, maps[m], 1, k=3, batch_size=1), atol=1e-6)
    d1, i1 = deletion_insertion_curves(model, x, maps[0], 1, k=3)
    assert d1.shape == (7,) and torch.allclose(d1, dele[0], atol=1e-6) and torch.allclose(i1, ins[0], atol=1e-6)


def test_images_that_hide_the_same_patches_are_forwarded_once():
    """Every curve starts or ends on the original and the fully hidden image; maps that agree on
    their first patches share those steps too. Each distinct image goes through the model once."""
    model, x = tiny_model(), image()
    a = torch.arange(16.0)
    b = a.clone()
    b[:2] = b[:2].flip(0)  # the same ranking as `a` but for its last two patches
    maps = torch.stack([a, b, a])  # the third map is the first again: all of its images are repeats
    seen = []
    handle = model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    try:
        dele, ins = deletion_insertion_curves(model, x, maps, 1, k=1, batch_size=7)
    finally:
        handle.remove()
    # distinct hidden sets, counted here by brute force
    distinct = set()
    for m in maps:
        order = ref_order(m.tolist())
        for s in range(17):
            distinct.add(frozenset(order[:s]))  # deletion
            distinct.add(frozenset(order[s:]))  # insertion
    assert sum(seen) == len(distinct) < 3 * 2 * 17
    assert max(seen) <= 7
    for m in range(3):
        assert dele[m].tolist() == pytest.approx(ref_curve(model, x, maps[m].tolist(), 1, 1, False), abs=1e-6)
        assert ins[m].tolist() == pytest.approx(ref_curve(model, x, maps[m].tolist(), 1, 1, True), abs=1e-6)


def test_curves_split_over_worker_threads_equal_one_thread_and_leave_the_thread_count(monkeypatch):
    from vit_core.analysis import faithfulness as F

    model, x = tiny_model(), image()
    maps = torch.randn(4, 16, generator=torch.Generator().manual_seed(8))
    monkeypatch.setenv(F.CURVE_WORKERS_ENV, "1")
    one = deletion_insertion_curves(model, x, maps, 2, k=1, batch_size=9)
    before = torch.get_num_threads()
    seen = set()
    handle = model.register_forward_hook(lambda m, i, o: seen.add(__import__("threading").current_thread().name))
    try:
        monkeypatch.setenv(F.CURVE_WORKERS_ENV, "3")
        many = deletion_insertion_curves(model, x, maps, 2, k=1, batch_size=9)
    finally:
        handle.remove()
    assert len(seen) > 1 and all(name.startswith("curves") for name in seen)  # the batches ran in the workers
    assert torch.get_num_threads() == before
    for a, b in zip(one, many):
        assert torch.allclose(a, b, atol=1e-12)
    for m in range(4):
        assert many[0][m].tolist() == pytest.approx(ref_curve(model, x, maps[m].tolist(), 2, 1, False), abs=1e-6)
    monkeypatch.setenv(F.CURVE_WORKERS_ENV, "lots")
    assert 1 <= F.curve_workers() <= 4  # a bad setting falls back to the cores


def test_curve_batch_size_holds_about_8k_tokens():
    from vit_core.analysis.faithfulness import curve_batch_size

    small = tiny_model()  # 16 patches + [CLS]
    assert curve_batch_size(small, 16, tokens_per_batch=17 * 100) == 100
    assert curve_batch_size(small, 16, tokens_per_batch=17 * 3) == 8  # never below 8
    assert curve_batch_size(small, 16) == 256  # 8192 // 17 = 481: never above 256
    big = tiny_model(img_size=64)  # 256 patches + [CLS]
    assert curve_batch_size(big, 256) == 8192 // 257 == 31


def test_curves_work_without_a_class_token_and_with_registers():
    for changes in (dict(class_token=False, global_pool="avg"), dict(reg_tokens=2)):
        model, x = tiny_model(**changes), image()
        scores = torch.arange(16.0)
        assert deletion_curve(model, x, scores, 0, k=5).tolist() == pytest.approx(
            ref_curve(model, x, scores.tolist(), 0, 5, False), abs=1e-6
        )


def test_curves_reject_bad_input():
    model, x = tiny_model(), image()
    with pytest.raises(ValueError, match="patches"):
        deletion_curve(model, x, torch.zeros(15), 0)
    with pytest.raises(ValueError, match="k"):
        deletion_curve(model, x, torch.zeros(16), 0, k=0)
    with pytest.raises(ValueError, match="target"):
        insertion_curve(model, x, torch.zeros(16), 3)
    with pytest.raises(ValueError, match="one preprocessed image"):
        deletion_curve(model, x.repeat(2, 1, 1, 1), torch.zeros(16), 0)
    with pytest.raises(ValueError, match="NaN"):
        deletion_curve(model, x, torch.full((16,), float("nan")), 0)


def test_random_saliencies_are_permutations():
    r = random_saliencies(10, count=4, seed=7)
    assert r.shape == (4, 10)
    assert all(sorted(row.tolist()) == list(range(10)) for row in r)
    assert torch.equal(r, random_saliencies(10, count=4, seed=7))


# ---------------------------------------------------------------- area


def test_curve_area_is_the_trapezoid_sum():
    curve = [0.9, 0.5, 0.4, 0.1, 0.0]
    hand = sum((curve[i] + curve[i + 1]) / 2 * 0.25 for i in range(4))
    assert curve_area(torch.tensor(curve)) == pytest.approx(hand)
    assert curve_area(torch.ones(7)) == pytest.approx(1.0)
    assert curve_area(torch.linspace(0, 1, 11)) == pytest.approx(0.5)
    # n = 16, k = 3: x = 0, 3/16, ..., 15/16, 1 (last step 1/16 wide)
    f = step_fractions(16, 3)
    assert f.tolist() == pytest.approx([0, 3 / 16, 6 / 16, 9 / 16, 12 / 16, 15 / 16, 1.0])
    c = [1.0, 0.8, 0.5, 0.3, 0.2, 0.1, 0.0]
    xs = [min(i * 3, 16) / 16 for i in range(7)]
    hand = sum((c[i] + c[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(6))
    assert curve_area(torch.tensor(c), f) == pytest.approx(hand)
    with pytest.raises(ValueError):
        curve_area(torch.tensor(c), step_fractions(16, 4))


# ---------------------------------------------------------------- agreement


def test_map_agreement_against_hand_ranks_and_scipy():
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    b = a + torch.randn(40, generator=g)
    r = map_agreement(a, b)
    assert r.spearman == pytest.approx(ref_spearman(a.tolist(), b.tolist()), abs=1e-12)
    assert r.top_k == 4  # 10% of 40
    top_a, top_b = set(ref_order(a.tolist())[:4]), set(ref_order(b.tolist())[:4])
    assert r.top_overlap == pytest.approx(len(top_a & top_b) / 4)
    try:
        from scipy.stats import spearmanr
    except ImportError:
        pass
    else:
        assert r.spearman == pytest.approx(float(spearmanr(a.numpy(), b.numpy())[0]), abs=1e-12)


def test_map_agreement_invariants():
    a = torch.randn(5, 7, generator=torch.Generator().manual_seed(6))
    same = map_agreement(a, 3 * a + 1)
    assert same.spearman == pytest.approx(1.0) and same.top_overlap == 1.0 and same.top_k == 3
    rev = map_agreement(a, -a)
    assert rev.spearman == pytest.approx(-1.0) and rev.top_overlap == 0.0
    assert math.isnan(map_agreement(a, torch.zeros(5, 7)).spearman)
    assert map_agreement(torch.arange(5.0), torch.arange(5.0)).top_k == 1  # at least 1
    with pytest.raises(ValueError):
        map_agreement(torch.zeros(4), torch.zeros(5))
    maps = torch.randn(3, 12, generator=torch.Generator().manual_seed(8))
    rho, over = agreement_matrix(maps)
    assert rho.shape == over.shape == (3, 3)
    assert rho[0, 2] == pytest.approx(ref_spearman(maps[0].tolist(), maps[2].tolist()))
    assert torch.allclose(rho, rho.T) and torch.allclose(torch.diagonal(rho), torch.ones(3, dtype=torch.float64))


# ---------------------------------------------------------------- randomisation cascade


def group_of(name: str) -> str:
    if name.startswith("blocks."):
        return "block " + name.split(".")[1]
    if name in ("pos_embed", "cls_token", "dist_token", "reg_token") or name.startswith("patch_embed"):
        return "embedding"
    return "head"


@pytest.mark.parametrize("changes", [dict(), dict(reg_tokens=1, class_token=False, global_pool="avg", depth=3)])
def test_randomise_cascade_goes_head_first_and_never_touches_the_original(changes):
    model = tiny_model(**changes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    with torch.random.fork_rng():
        torch.manual_seed(11)
        fresh = dict(VisionTransformer(model.cfg).named_parameters())
    L = model.cfg.depth
    expected = ["trained", "head", *[f"block {i}" for i in reversed(range(L))], "embedding"]
    steps = list(randomise_cascade(model, seed=11))
    assert [name for name, _ in steps] == expected
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    trained = dict(model.named_parameters())
    for i, (name, copy) in enumerate(steps):
        assert copy is not model
        randomised = set(expected[1 : i + 1])
        for pname, p in copy.named_parameters():
            want = fresh[pname] if group_of(pname) in randomised else trained[pname]
            assert torch.equal(p, want), (name, pname)
            assert p.data_ptr() != trained[pname].data_ptr()
    for pname, p in steps[-1][1].named_parameters():  # fully re-initialised: nothing left of training
        assert not torch.equal(p, trained[pname]), pname
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # same seed, same cascade; a copy handed out earlier is not changed by later steps
    again = dict(randomise_cascade(model, seed=11))
    assert all(torch.equal(p, q) for p, q in zip(again["block 0"].parameters(), steps[L + 1][1].parameters()))
    for pname, p in steps[1][1].named_parameters():
        assert torch.equal(p, fresh[pname] if group_of(pname) == "head" else trained[pname])


# ---------------------------------------------------------------- knockout


def test_knockout_matches_a_hand_written_forward_and_leaves_the_model_as_it_was():
    model = tiny_model(depth=3, num_heads=4)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
        assert torch.allclose(ref_forward(model, x), plain, atol=1e-5)  # the reference is the model
        for heads in ([(0, 1)], [(2, 3)], [(0, 0), (1, 2), (1, 3), (2, 0)], [(1, 2), (1, 2)]):
            got = knockout_heads(model, x, heads)
            assert torch.allclose(got, ref_forward(model, x, heads), atol=1e-5), heads
            assert not torch.allclose(got, plain, atol=1e-4)
        assert torch.allclose(knockout_heads(model, x, []), plain, atol=1e-6)
    for blk in model.blocks:
        assert not blk.attn.proj._forward_pre_hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(x), plain)


def test_knockout_hooks_are_removed_on_error_and_bad_heads_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError):
        knockout_heads(model, torch.zeros(1, 3, 15, 15), [(0, 0), (1, 1)])  # fails inside the forward
    with pytest.raises(RuntimeError):
        with heads_knocked_out(model, [(1, 0)]):
            raise RuntimeError("user code failed")
    for blk in model.blocks:
        assert not blk.attn.proj._forward_pre_hooks
    with pytest.raises(ValueError, match="does not exist"):
        knockout_heads(model, image(), [(2, 0)])
    with pytest.raises(ValueError, match="does not exist"):
        knockout_heads(model, image(), [(0, 2)])


def test_knockout_applies_to_trace_and_mean_ablation_matches_the_reference():
    model = tiny_model()
    ref_imgs = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    x = image()
    captured: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(5):
            ref_forward(model, ref_imgs[i : i + 1], capture=captured)
    means = torch.stack([torch.cat(captured[l]).mean(0) for l in range(2)])  # (L, N, D)
    got_means = head_output_means(model, ref_imgs, batch_size=2)
    assert torch.allclose(got_means, means, atol=1e-5)
    with torch.no_grad():
        want = ref_forward(model, x, [(0, 1), (1, 0)], means=means)
    assert torch.allclose(knockout_heads(model, x, [(0, 1), (1, 0)], means=got_means), want, atol=1e-5)
    with heads_knocked_out(model, [(0, 0)]):
        tr = model.trace(x)
    with torch.no_grad():
        assert torch.allclose(tr.logits, ref_forward(model, x, [(0, 0)]), atol=1e-5)


def test_head_importance_matches_per_image_hand_knockouts():
    model = tiny_model(depth=2, num_heads=2)
    imgs = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        pred = model(imgs).argmax(-1)
    labels = torch.where(torch.arange(7) % 3 == 0, (pred + 1) % 3, pred)  # mostly right, some wrong
    calls = []
    res = head_importance(model, imgs, labels, progress=lambda done, total: calls.append((done, total)), batch_size=4)
    assert res.accuracy_drop.shape == res.logprob_drop.shape == (2, 2)

    def score(heads):
        acc = lp = 0.0
        for i in range(7):
            with torch.no_grad():
                logits = ref_forward(model, imgs[i : i + 1], heads)[0].double()
            acc += float(int(logits.argmax()) == int(labels[i]))
            lp += float(torch.log_softmax(logits, -1)[labels[i]])
        return acc / 7, lp / 7

    base_acc, base_lp = score([])
    assert res.accuracy == pytest.approx(base_acc) and res.logprob == pytest.approx(base_lp, abs=1e-5)
    assert res.num_images == 7
    for l in range(2):
        for h in range(2):
            acc, lp = score([(l, h)])
            assert float(res.accuracy_drop[l, h]) == pytest.approx(base_acc - acc, abs=1e-9)
            assert float(res.logprob_drop[l, h]) == pytest.approx(base_lp - lp, abs=1e-5)
    assert calls[0] == (0, 7) and calls[-1] == (7, 7)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and len(calls) == 1 + 4  # chunks of 2 images
    for blk in model.blocks:
        assert not blk.attn.proj._forward_pre_hooks


# ---------------------------------------------------------------- per-patch logit lens


@pytest.mark.parametrize(
    "changes",
    [dict(), dict(class_token=False, global_pool="avg"), dict(reg_tokens=2), dict(distill_token=True)],
)
def test_patch_logit_lens_matches_a_per_token_loop(changes):
    model = tiny_model(**changes)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    tr = model.trace(x)
    k = model.cfg.num_prefix_tokens
    lens = patch_logit_lens(model, tr, image=1)
    assert lens.shape == (3, 16, 3)
    for depth in range(3):
        for i in range(16):
            t = tr.hidden_states[1, depth, k + i]
            with torch.no_grad():
                if model.cfg.use_fc_norm:  # the norm comes after pooling
                    z = layer_norm(t, model.fc_norm)
                else:
                    z = layer_norm(t, model.norm)
                logits = z @ model.head.weight.T + model.head.bias
                if model.cfg.distill_token:
                    logits = (logits + z @ model.head_dist.weight.T + model.head_dist.bias) / 2
            assert torch.allclose(lens[depth, i], torch.softmax(logits, -1), atol=1e-5), (depth, i)
    assert torch.allclose(lens.sum(-1), torch.ones(3, 16), atol=1e-5)


def test_patch_logit_lens_refuses_a_headless_model():
    model = tiny_model(num_classes=0)
    with pytest.raises(ValueError, match="no classifier head"):
        patch_logit_lens(model, model.trace(image()))


def test_knockout_of_every_head_with_a_separate_head_width_equals_zeroing_the_projection():
    """A model whose heads are narrower than D / h (dim_head): knocking out every head of every
    layer leaves only attn.proj's bias, exactly as zeroing its weight does."""
    import copy

    from vit_core import VisionTransformer, ViTConfig
    from vit_core.analysis.knockout import knockout_heads

    torch.manual_seed(0)
    cfg = ViTConfig(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, dim_head=4, num_classes=3)
    model = VisionTransformer(cfg).eval()
    assert cfg.inner_dim == 8 != cfg.embed_dim
    x = torch.randn(2, 3, 8, 8)
    every = [(layer, h) for layer in range(2) for h in range(2)]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for blk in zeroed.blocks:
            blk.attn.proj.weight.zero_()
        want = zeroed(x)
    assert torch.allclose(knockout_heads(model, x, every), want, atol=1e-6)
