"""Lessons: the file format and its validator (every problem names its line), the bundled lessons,
and the live answers to their questions against independent computations on a tiny seeded ViT."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_core import VisionTransformer, ViTConfig, load_checkpoint, load_image, preprocess
from vit_core.analysis import HEAD_FUSIONS, OCCLUSION_MODES, grid_distances, mean_attention_distance, shuffle_image
from vit_core.analysis import questions as qa
from vit_core.errors import VitCoreError
from vit_core.lessons import (
    FILLS,
    FOCUS,
    LESSONS_DIR,
    MAX_BYTES,
    MAX_STEPS,
    NEEDS,
    NUMBER_ANSWERS,
    PAGES,
    QUESTION_KINDS,
    TRAIN_PRESETS,
    HideSpec,
    LessonError,
    LessonSkip,
    Question,
    StepState,
    bundled_lessons,
    key_lines,
    load_lesson,
    sample_image_names,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "assets" / "vit_cifar10.safetensors"

GOOD = """\
id = "tiny"
title = "A tiny lesson"
minutes = 5
summary = "Two steps."

[[steps]]
title = "First"
page = "attention"
focus = "attention.overlay"
text = '''
One sentence. Two sentences.
'''

[steps.state]
layer = "last"
query_patch = "cls"

[steps.question]
kind = "click_patch"
prompt = "Click it."

[[steps]]
title = "Second"
page = "prediction"
text = "Hide patches. Watch."

[steps.question]
kind = "guess_probability"
hide = [0, 1, 5]
prompt = "What probability?"
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny forward passes are slower with threads that wait for busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def only_problem(text: str) -> str:
    problems = validate(text, name="lesson.toml")
    assert len(problems) == 1, [str(p) for p in problems]
    return str(problems[0])


# ---------------------------------------------------------------- the bundled lessons


def sentences(markdown: str) -> int:
    """Sentences of a step's text, formulas and abbreviations aside."""
    prose = re.sub(r"\$[^$]*\$", "X", markdown)
    prose = re.sub(r"\b(e\.g|i\.e|et al)\.", "X", prose)
    return len(re.findall(r"[.!?](?:\s|$)", prose.strip()))


def test_every_bundled_lesson_loads_and_validates() -> None:
    files = sorted(LESSONS_DIR.glob("*.toml"))
    names = {p.stem for p in files}
    assert {"vit_in_20_minutes", "attention_one_head", "why_positions", "train_one_yourself"} <= names
    for p in files:
        assert validate(p) == [], p.name
    lessons = bundled_lessons()
    assert [lesson.id for lesson in lessons][:4] == [
        "vit_in_20_minutes",
        "attention_one_head",
        "why_positions",
        "train_one_yourself",
    ]
    assert len({lesson.id for lesson in lessons}) == len(lessons)
    for lesson in lessons:
        assert lesson.id == Path(lesson.source).stem
        for i, step in enumerate(lesson.steps, start=1):
            assert 2 <= sentences(step.text) <= 4, (lesson.id, i, step.text)
            if step.focus is not None:
                assert FOCUS[step.focus][0] == step.page
        # most steps ask one question
        assert lesson.num_questions >= len(lesson.steps) / 2 - 0.5, lesson.id
    total = sum(len(lesson.steps) for lesson in lessons)
    assert sum(lesson.num_questions for lesson in lessons) > total / 2


def test_lesson_one_is_the_readme_tour() -> None:
    tour = load_lesson(LESSONS_DIR / "vit_in_20_minutes.toml")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A short tour for teachers")[1].split("\n## ")[0]
    headings = re.findall(r"^\d+\. \*\*(\w[\w ]*)\*\*", section, re.MULTILINE)
    assert len(headings) == len(tour.steps) == 7
    assert [PAGES[s.page] for s in tour.steps] == headings
    assert tour.steps[0].state == StepState(model="bundled", image="CIFAR-10: cat")
    kinds = {s.question.kind for s in tour.steps if s.question}
    assert kinds == set(QUESTION_KINDS) - {"pick_layer"}


def test_every_question_kind_is_used_and_every_lesson_kind_of_state_is_exercised() -> None:
    lessons = bundled_lessons()
    kinds = {s.question.kind for lesson in lessons for s in lesson.steps if s.question}
    assert kinds == set(QUESTION_KINDS)
    models = {s.state.model for lesson in lessons for s in lesson.steps} - {None}
    assert models == {"bundled", "untrained", "session"}


def test_constants_match_the_app_and_the_library() -> None:
    from ui.images import sample_images
    from ui.navigation import PAGES as NAV

    # every page a lesson can go to is a page of the app, in the app's order (lessons need not visit every page)
    titles = [p.title for p in NAV]
    assert all(t in titles for t in PAGES.values())
    assert [PAGES[k] for k in PAGES if k != "lessons"] == [t for t in titles if t in PAGES.values() and t != "Lessons"]
    assert FILLS == OCCLUSION_MODES
    from vit_core.lessons import HEAD_FUSIONS as LESSON_FUSIONS

    assert LESSON_FUSIONS == HEAD_FUSIONS
    assert sample_image_names() == list(sample_images())
    assert all(page in PAGES for page, _ in FOCUS.values())


def test_train_presets_are_the_train_pages() -> None:
    from vit_core.runs import APP_PRESETS

    assert set(TRAIN_PRESETS) == set(APP_PRESETS)


@pytest.mark.skipif(not BUNDLED.exists(), reason="the bundled model is not installed")
def test_every_bundled_question_is_answered_by_the_bundled_model() -> None:
    """Walk every lesson with the bundled model on the cat: each question gets a finite answer."""
    model = load_checkpoint(BUNDLED).eval()
    x = preprocess(load_image((ROOT / "assets/samples/cifar10/cat.jpg").read_bytes()), model.cfg)
    with torch.no_grad():
        trace = model.trace(x)
    for lesson in bundled_lessons():
        qa.check_needs(model, lesson.all_needs() - {"training"})
        for step in lesson.steps:
            qa.resolve_state(step.state, model, trace)
            if step.question is None:
                continue
            truth = qa.answer(step.question, model, x, trace)
            assert truth.kind == step.question.kind
            assert truth.text
            value = float(truth.value)
            assert math.isfinite(value)
            points, verdict = qa.score(step.question.kind, truth.value, truth)
            assert points == 1.0 and verdict


# ---------------------------------------------------------------- the format and its errors


def test_good_lesson_parses_into_dataclasses() -> None:
    lesson = load_lesson(GOOD)
    assert (lesson.id, lesson.title, lesson.minutes, lesson.order) == ("tiny", "A tiny lesson", 5, 100)
    first, second = lesson.steps
    assert first.text == "One sentence. Two sentences."
    assert first.state == StepState(layer="last", query_patch="cls")
    assert first.question == Question(kind="click_patch", prompt="Click it.")
    assert first.line == line_of(GOOD, "[[steps]]", 1)
    assert second.question.hide == HideSpec(patches=(0, 1, 5))
    assert first.needs == {"class_token", "attention"}
    assert second.needs == {"classifier"}
    # the same lesson from bytes, from a Path and from a path given as a string
    assert load_lesson(GOOD.encode()) == lesson
    assert load_lesson(LESSONS_DIR / "why_positions.toml") == load_lesson(str(LESSONS_DIR / "why_positions.toml"))


def test_bad_toml_passes_the_parsers_line_through() -> None:
    text = GOOD.replace('title = "Second"', "title = Second")
    msg = only_problem(text)
    assert msg.startswith(f"lesson.toml line {line_of(text, 'title = Second')}: invalid TOML: ")


def test_unknown_page_names_the_line_and_the_pages() -> None:
    text = GOOD.replace('page = "attention"', 'page = "atention"')
    msg = only_problem(text)
    line = line_of(text, 'page = "atention"')
    assert msg.startswith(f"lesson.toml line {line}: step 1: unknown page 'atention' (pages: overview, patches,")
    assert "did you mean 'attention'?" in msg


def test_unknown_question_kind() -> None:
    text = GOOD.replace('kind = "guess_probability"', 'kind = "guess_the_number"')
    msg = only_problem(text)
    assert msg.startswith(f"lesson.toml line {line_of(text, 'guess_the_number')}: step 2: unknown question kind")
    for kind in QUESTION_KINDS:
        assert kind in msg


def test_step_missing_text_points_at_its_table() -> None:
    text = GOOD.replace('text = "Hide patches. Watch."\n', "")
    assert only_problem(text) == f"lesson.toml line {line_of(text, '[[steps]]', 2)}: step 2: text is missing"


@pytest.mark.parametrize("value", ["2.5", '"first"', "0", "true", "-1"])
def test_layer_of_the_wrong_type(value: str) -> None:
    text = GOOD.replace('layer = "last"', f"layer = {value}")
    msg = only_problem(text)
    assert msg.startswith(f"lesson.toml line {line_of(text, f'layer = {value}')}: step 1: state.layer must be")
    assert '"last"' in msg


def test_layer_in_an_inline_state_table() -> None:
    text = GOOD.replace(
        '[steps.state]\nlayer = "last"\nquery_patch = "cls"\n', 'state = { query_patch = "cls", layer = 1.5 }\n'
    )
    msg = only_problem(text)
    assert msg.startswith(f"lesson.toml line {line_of(text, 'state = {')}: step 1: state.layer must be")


def test_too_many_steps() -> None:
    step = '[[steps]]\ntitle = "S"\npage = "overview"\ntext = "A. B."\n\n'
    text = GOOD.split("[[steps]]")[0] + step * (MAX_STEPS + 5)
    msg = only_problem(text)
    line = line_of(text, "[[steps]]", MAX_STEPS + 1)
    assert (
        msg
        == f"lesson.toml line {line}: step {MAX_STEPS + 1}: a lesson may have at most {MAX_STEPS} steps; this one has {MAX_STEPS + 5}"
    )
    assert validate(GOOD.split("[[steps]]")[0] + step * MAX_STEPS) == []


def test_too_large_is_refused_before_parsing(tmp_path: Path) -> None:
    text = GOOD + "# " + "x" * MAX_BYTES + "\n"
    msg = only_problem(text)
    assert msg.startswith("lesson.toml: the file is ") and f"at most {MAX_BYTES:,} bytes" in msg
    path = tmp_path / "big.toml"
    path.write_text(text)
    with pytest.raises(LessonError) as e:
        load_lesson(path)
    assert str(e.value).startswith("big.toml: the file is ")
    assert isinstance(e.value, VitCoreError)


def test_not_utf8() -> None:
    data = GOOD.encode().replace(b"Two steps.", b"Two steps \xff.")
    problems = validate(data, name="up.toml")
    assert [str(p) for p in problems] == [f"up.toml line {line_of(GOOD, 'Two steps.')}: the file is not UTF-8 text"]


def test_every_problem_is_reported_with_its_own_line() -> None:
    text = (
        GOOD.replace('page = "prediction"', 'page = "predictions"')
        .replace('prompt = "Click it."', 'promt = "Click it."')
        .replace("minutes = 5", 'minutes = "five"')
        .replace('focus = "attention.overlay"', 'focus = "positions.tiles"')
    )
    problems = validate(text, name="t.toml")
    by_line = {p.line: str(p) for p in problems}
    assert "minutes must be a whole number" in by_line[line_of(text, "minutes =")]
    assert "focus 'positions.tiles' is on page 'positions'" in by_line[line_of(text, "focus =")]
    assert (
        "unknown key 'promt'" in by_line[line_of(text, "promt")]
        and "did you mean 'prompt'?" in by_line[line_of(text, "promt")]
    )
    assert "unknown page 'predictions'" in by_line[line_of(text, "predictions")]
    assert "step 2:" in by_line[line_of(text, "predictions")]


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        ("hide = [0, 1, 5]", 'hide = "top ten by rollout"', "hide =", "question.hide must be"),
        ("hide = [0, 1, 5]", 'hide = "top 150% by rollout"', "hide =", "at most 100%"),
        ("hide = [0, 1, 5]", "seed = 3", "seed =", "'seed' is not a field of kind 'guess_probability'"),
        ('query_patch = "cls"', 'query_patch = "middle"', "query_patch", "state.query_patch must be a patch number"),
        ('query_patch = "cls"', 'image = "CIFAR-10: kat"', "image =", "did you mean 'CIFAR-10: cat'?"),
        ('query_patch = "cls"', 'model = "bundle"', "model =", "unknown model 'bundle'"),
        (
            'query_patch = "cls"',
            "discard_ratio = 1.0",
            "discard_ratio",
            "state.discard_ratio must be a number in [0, 1)",
        ),
        ('query_patch = "cls"', 'head = "all"', "head =", 'state.head must be a head number from 0 or "mean"'),
        ('kind = "click_patch"', 'kind = "number"', "[steps.question]", "question.answer is missing"),
    ],
)
def test_more_problems_each_on_their_line(old: str, new: str, needle: str, expected: str) -> None:
    text = GOOD.replace(old, new)
    msg = only_problem(text)
    assert msg.startswith(f"lesson.toml line {line_of(text, needle)}: step "), msg
    assert expected in msg


def test_lesson_level_problems() -> None:
    text = GOOD.replace('id = "tiny"', 'id = "Tiny Lesson"').replace("minutes = 5", 'minutes = 5\nneeds = ["wings"]')
    problems = [str(p) for p in validate(text)]
    assert problems[0].startswith(f"lesson.toml line {line_of(text, 'id =')}: id must be a short name")
    assert problems[1].startswith(f"lesson.toml line {line_of(text, 'needs')}: unknown need 'wings'")
    empty = 'id = "x"\ntitle = "T"\nminutes = 1\nsummary = "S."\n'
    assert [str(p) for p in validate(empty)] == [
        "lesson.toml: the lesson has no steps: add at least one [[steps]] table"
    ]


def test_top_share_counts_as_the_prediction_pages_button() -> None:
    spec = HideSpec(top_percent=10.0, by="rollout")
    for n in (1, 9, 10, 16, 30, 64, 70, 196, 576):
        assert spec.count(n) == max(1, n // 10)
    assert HideSpec(patches=(1, 2)).count(64) == 2


def test_key_lines_skip_multiline_strings_and_index_arrays_of_tables() -> None:
    text = 'a = 1\n[[steps]]\ntext = """\npage = "fake"\n"""\npage = "x"\n[steps.state]\nlayer = 2\n[[steps]]\nstate.head = 1\n'
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert lines[("steps", 0)] == 2
    assert lines[("steps", 0, "text")] == 3
    assert lines[("steps", 0, "page")] == 6
    assert lines[("steps", 0, "state", "layer")] == 8
    assert lines[("steps", 1)] == 9
    assert lines[("steps", 1, "state", "head")] == 10


# ---------------------------------------------------------------- live answers on a tiny ViT

TINY_CFG = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)


def tiny(seed: int = 0, **overrides) -> VisionTransformer:
    """The brief's tiny ViT with weights spread wider than timm's init, so attention is peaked."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(ViTConfig(**{**TINY_CFG, **overrides}), ["ant", "bee", "cat"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.0, 0.5)
    return model.eval()


def image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def forward_probs(model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().softmax(-1)[0].numpy()


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_cls_attention_argmax_against_a_loop(fusion: str) -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    A = trace.attentions[0]  # (L, h, N, N)
    L, h, N, _ = A.shape
    for layer in range(-L, L):
        best, best_v = None, -1.0
        values = []
        for t in range(1, N):
            heads = [float(A[layer, j, 0, t]) for j in range(h)]
            v = {"mean": sum(heads) / h, "max": max(heads), "min": min(heads)}[fusion]
            values.append(v)
            if v > best_v:
                best, best_v = t - 1, v
        p, v, m = qa.cls_attention_argmax(trace, layer, fusion)
        assert p == best and v == pytest.approx(best_v, abs=1e-6)
        assert m.shape == (4, 4)
        np.testing.assert_allclose(m.reshape(-1).numpy(), values, atol=1e-6)


def test_patch_distance_is_the_grid_distance() -> None:
    for grid in [(4, 4), (3, 5)]:
        d = grid_distances(grid)
        n = grid[0] * grid[1]
        for a in range(n):
            for b in range(n):
                assert qa.patch_distance(a, b, grid) == pytest.approx(float(d[a, b]), abs=1e-6)
    assert qa.patch_distance(0, 15, (4, 4)) == pytest.approx(3 * math.sqrt(2))
    with pytest.raises(ValueError):
        qa.patch_distance(0, 16, (4, 4))


@pytest.mark.parametrize("fill", ["mean", "zero"])
def test_probability_after_hiding_against_a_painted_image(fill: str) -> None:
    model, x = tiny(), image()
    patches = [0, 5, 15]
    painted = x.clone()
    mean = x[0].mean(dim=(1, 2))
    for p in patches:
        r, c = divmod(p, 4)
        for ch in range(3):
            for i in range(4):
                for j in range(4):
                    painted[0, ch, r * 4 + i, c * 4 + j] = mean[ch] if fill == "mean" else 0.0
    want = forward_probs(model, painted)
    before = forward_probs(model, x)
    eff = qa.probability_after_hiding(model, x, patches, target=2, fill=fill)
    assert eff.after == pytest.approx(want[2], abs=1e-6)
    assert eff.before == pytest.approx(before[2], abs=1e-6)
    eff = qa.probability_after_hiding(model, x, patches, fill=fill)
    assert eff.target == int(np.argmax(before)) and eff.new_top == int(np.argmax(want))


def test_probability_after_dropping_tokens_against_a_shorter_sequence() -> None:
    model, x = tiny(), image()
    with torch.no_grad():
        tokens, _, _ = model.embed(x)
        keep = [0] + [1 + p for p in range(16) if p not in (3, 4)]
        t = tokens[:, keep]
        for blk in model.blocks:
            t, _ = blk(t)
        want = model.head(model.norm(t)[:, 0]).double().softmax(-1)[0].numpy()
    eff = qa.probability_after_hiding(model, x, [4, 3], target=1, fill="drop")
    assert eff.after == pytest.approx(want[1], abs=1e-6)
    assert eff.patches == (3, 4)


def test_shuffle_effect_three_ways() -> None:
    model, x = tiny(), image()
    follow = qa.shuffle_effect(model, x, seed=3, positions="follow")
    assert not follow.changed and follow.max_logit_change < 1e-5 and abs(follow.difference) < 1e-3
    slot = qa.shuffle_effect(model, x, seed=3, positions="slot")
    want = forward_probs(model, shuffle_image(x, slot.perm, 4))
    np.testing.assert_allclose(slot.probs_after, want, atol=1e-6)
    assert slot.changed == (int(np.argmax(want)) != int(np.argmax(forward_probs(model, x))))
    assert slot.difference == pytest.approx((want[slot.top] - slot.before) * 100, abs=1e-4)
    none = qa.shuffle_effect(model, x, seed=3, positions="none")
    assert not none.changed and none.max_logit_change < 1e-5
    # without positions "before" is the model without them, not the model's prediction
    with torch.no_grad():
        t = torch.cat([model.cls_token, model.patch_embed(x)[0]], dim=1)
        for blk in model.blocks:
            t, _ = blk(t)
        no_pos = model.head(model.norm(t)[:, 0]).double().softmax(-1)[0].numpy()
    np.testing.assert_allclose(none.probs_before, no_pos, atol=1e-6)


def test_furthest_layer_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        md = rng.uniform(0, 10, size=(rng.integers(1, 8), rng.integers(1, 5)))
        means = [sum(row) / len(row) for row in md]
        assert qa.furthest_layer(md) == means.index(max(means))
        assert qa.furthest_layer(torch.as_tensor(md)) == means.index(max(means))
    assert qa.furthest_layer(np.array([[1.0, 3.0], [2.0, 2.0]])) == 0  # ties: the earlier layer
    model, x = tiny(), image()
    trace = model.trace(x)
    truth = qa.answer(Question(kind="pick_layer", prompt="?"), model, x, trace)
    md = mean_attention_distance(trace.attentions, trace.grid, 4, 1)
    assert truth.value == qa.furthest_layer(md) + 1
    mine = np.array([[0.0, 0.0], [1.0, 5.0]])
    assert qa.answer(Question(kind="pick_layer", prompt="?"), model, x, trace, mean_distances=mine).value == 2


def test_click_patch_answer_and_the_rollout_variant() -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    truth = qa.answer(Question(kind="click_patch", prompt="?"), model, x, trace)
    p, v, _ = qa.cls_attention_argmax(trace, -1)
    assert (truth.value, truth.grid) == (p, (4, 4)) and f"patch {p} " in truth.text
    first = qa.answer(Question(kind="click_patch", prompt="?", layer=1, head_fusion="max"), model, x, trace)
    assert first.value == qa.cls_attention_argmax(trace, 0, "max")[0]
    roll = qa.answer(Question(kind="click_patch", prompt="?", map="rollout"), model, x, trace)
    from vit_core.analysis import rollout_cls_map

    m = rollout_cls_map(trace.attentions, (4, 4), 1)[0].reshape(-1)
    assert roll.value == int(torch.argmax(m))
    with pytest.raises(LessonSkip, match="layer 3"):
        qa.answer(Question(kind="click_patch", prompt="?", layer=3), model, x, trace)


def test_guess_probability_answer_hides_the_top_share_of_a_map() -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    q = Question(kind="guess_probability", prompt="?", hide=HideSpec(top_percent=25.0, by="rollout"))
    truth = qa.answer(q, model, x, trace)
    from vit_core.analysis import class_attention_map, rollout_cls_map

    ranked = torch.sort(rollout_cls_map(trace.attentions, (4, 4), 1)[0].reshape(-1), descending=True, stable=True)
    top4 = sorted(int(i) for i in ranked.indices[:4])
    assert truth.details["patches"] == top4
    assert truth.value == pytest.approx(qa.probability_after_hiding(model, x, top4).after * 100)
    cm = Question(kind="guess_probability", prompt="?", hide=HideSpec(top_percent=10.0, by="class map"), target="bee")
    truth = qa.answer(cm, model, x, trace)
    top1 = [int(class_attention_map(model, x, 1)[0].reshape(-1).argmax())]  # 10% of 16: at least one patch
    assert truth.details["patches"] == top1 and truth.details["target"] == 1
    with pytest.raises(LessonSkip, match="patch 16"):
        qa.answer(Question(kind="guess_probability", prompt="?", hide=HideSpec(patches=(16,))), model, x, trace)
    with pytest.raises(LessonSkip, match="no class 'wasp'"):
        qa.answer(Question(kind="guess_probability", prompt="?", target="wasp"), model, x, trace)


def test_number_answers_against_the_model() -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    want = {
        "num_patches": 16,
        "num_tokens": 17,
        "patch_values": 48,
        "patches_at_half_patch_size": 64,
        "embed_dim": 16,
        "num_layers": 2,
        "num_heads": 2,
        "head_dim": 8,
        "num_params": sum(p.numel() for p in model.parameters()),
        "block_params_percent": 100 * sum(p.numel() for b in model.blocks for p in b.parameters()) / model.num_params(),
        "attention_weights_per_head": 17 * 17,
        "attention_row_sum": 1.0,
        "cls_self_attention_percent": 100 * float(trace.attentions[0, -1, :, 0, 0].mean()),
        "top_probability": 100 * float(forward_probs(model, x).max()),
    }
    assert set(want) == set(NUMBER_ANSWERS)
    for name, value in want.items():
        assert qa.number_answer(name, model, trace) == pytest.approx(value, rel=1e-5), name
        truth = qa.answer(Question(kind="number", prompt="?", answer=name), model, x, trace)
        assert truth.value == pytest.approx(value, rel=1e-5)


# ---------------------------------------------------------------- what a model lacks


def test_a_model_without_class_token_skips_cls_questions() -> None:
    model, x = tiny(class_token=False, global_pool="avg"), image()
    trace = model.trace(x)
    with pytest.raises(LessonSkip, match=r"no \[CLS\] token") as e:
        qa.cls_attention_argmax(trace)
    assert e.value.need == "class_token" and isinstance(e.value, VitCoreError)
    with pytest.raises(LessonSkip) as e:
        qa.answer(Question(kind="click_patch", prompt="?"), model, x, trace)
    assert e.value.need == "class_token"
    with pytest.raises(LessonSkip):
        qa.resolve_state(StepState(query_patch="cls"), model, trace)
    with pytest.raises(LessonSkip):
        qa.number_answer("cls_self_attention_percent", model, trace)
    assert set(qa.model_lacks(model, NEEDS)) == {"class_token"}
    # what does not need [CLS] still works
    assert 0 <= qa.answer(Question(kind="guess_probability", prompt="?"), model, x, trace).value <= 100
    assert qa.answer(Question(kind="pick_layer", prompt="?"), model, x, trace).value in (1, 2)
    assert not qa.answer(Question(kind="yes_no_shuffle", prompt="?"), model, x, trace).value


def test_other_missing_needs_each_raise_lesson_skip() -> None:
    x = image()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        headless = VisionTransformer(ViTConfig(**{**TINY_CFG, "num_classes": 0})).eval()
    lacks = qa.model_lacks(headless, NEEDS)
    assert set(lacks) == {"classifier", "class_names"}
    for q in (Question(kind="guess_probability", prompt="?"), Question(kind="yes_no_shuffle", prompt="?")):
        with pytest.raises(LessonSkip, match="no classifier head"):
            qa.answer(q, headless, x)
    unnamed = VisionTransformer(ViTConfig(**TINY_CFG)).eval()
    assert set(qa.model_lacks(unnamed, NEEDS)) == {"class_names"}
    with pytest.raises(LessonSkip, match="classes have no names"):
        qa.answer(Question(kind="guess_probability", prompt="?", target="cat"), unnamed, x)
    assert qa.answer(Question(kind="guess_probability", prompt="?"), unnamed, x).kind == "guess_probability"
    flat = tiny()
    with torch.no_grad():
        flat.pos_embed.zero_()
    assert set(qa.model_lacks(flat, NEEDS)) == {"position_embeddings"}
    with pytest.raises(LessonSkip, match="position embeddings are all zero"):
        qa.answer(Question(kind="yes_no_shuffle", prompt="?", positions="slot"), flat, x)
    lonely = tiny(attention_axis="batch")
    assert set(qa.model_lacks(lonely, NEEDS)) == {"attention"}
    with pytest.raises(LessonSkip):
        qa.answer(Question(kind="pick_layer", prompt="?"), lonely, x)
    with pytest.raises(LessonSkip, match="cannot be halved"):
        odd = VisionTransformer(ViTConfig(**{**TINY_CFG, "img_size": 15, "patch_size": 5})).eval()
        qa.number_answer("patches_at_half_patch_size", odd, odd.trace(torch.zeros(1, 3, 15, 15)))


def test_resolve_state_against_the_model() -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    r = qa.resolve_state(
        StepState(layer="last", head=1, query_patch="center", start_layer=2, class_name="predicted", tile="corner"),
        model,
        trace,
    )
    assert (r.layer, r.layer_index, r.head) == (2, 1, 1)
    assert (r.query_patch, r.query_token) == (2 * 4 + 2, 1 + 10)
    assert r.start_layer == 2 and r.tile == 0
    assert r.class_index == int(np.argmax(forward_probs(model, x)))
    assert qa.resolve_state(StepState(class_name="Bee"), model, trace).class_index == 1
    assert qa.resolve_state(StepState(), model, trace) == qa.ResolvedState()
    for bad in (StepState(layer=3), StepState(head=2), StepState(query_patch=16), StepState(start_layer=3)):
        with pytest.raises(LessonSkip):
            qa.resolve_state(bad, model, trace)


# ---------------------------------------------------------------- scoring and the summary


def non_increasing(xs: list[float]) -> bool:
    return all(a >= b - 1e-12 for a, b in zip(xs, xs[1:]))


def test_scores_fall_monotonically_with_the_error() -> None:
    grid = (8, 8)
    truth = 27  # row 3, column 3
    by_distance = sorted(range(64), key=lambda p: qa.patch_distance(p, truth, grid))
    points = [qa.score("click_patch", p, truth, grid)[0] for p in by_distance]
    assert points[0] == 1.0 and non_increasing(points) and points[-1] < 0.5
    assert qa.score("click_patch", 29, truth, grid)[1] == "close: 2 patches away"
    assert qa.score("click_patch", 28, truth, grid)[1].startswith("very close")

    pts = [qa.score("guess_probability", 40 + e, 40.0)[0] for e in np.linspace(0, 60, 61)]
    assert pts[0] == 1.0 and non_increasing(pts) and pts[-1] == 0.0
    assert qa.score("guess_probability", 44, 40.0)[1].startswith("within 5 points")
    pts_below = [qa.score("guess_probability", 40 - e, 40.0)[0] for e in np.linspace(0, 40, 41)]
    assert non_increasing(pts_below)

    pts = [qa.score("pick_layer", 4 + d, 4)[0] for d in range(6)]
    assert pts[0] == 1.0 and non_increasing(pts) and pts[-1] == 0.0

    pts = [qa.score("number", 100 * f, 100)[0] for f in (1, 1.04, 1.5, 2, 5, 10, 100)]
    assert pts[0] == pts[1] == 1.0 and non_increasing(pts) and pts[-1] == 0.0
    pts = [qa.score("number", 100 / f, 100)[0] for f in (1, 1.5, 2, 5, 10, 100)]
    assert non_increasing(pts)
    assert qa.score("number", 0.5, 0.0)[0] < 1.0 and qa.score("number", 0, 0)[0] == 1.0
    assert "factor of 4.0" in qa.score("number", 400, 100)[1]

    assert qa.score("yes_no_shuffle", True, True) == (1.0, "right")
    assert qa.score("yes_no_shuffle", True, False)[0] == 0.0
    with pytest.raises(ValueError):
        qa.score("riddle", 1, 1)


def test_summary_lists_guesses_against_reality() -> None:
    model, x = tiny(), image()
    trace = model.trace(x)
    q1 = Question(kind="click_patch", prompt="Where?")
    q2 = Question(kind="number", prompt="How many?", answer="num_tokens")
    a1, a2 = qa.answer(q1, model, x, trace), qa.answer(q2, model, x, trace)
    responses = [qa.respond(1, q1, 0, a1), qa.respond(3, q2, 10, a2), qa.respond(3, q2, 17, a2)]
    rows = qa.summary(responses, skipped={2: "this model has no [CLS] token"})
    assert [r.step for r in rows] == [1, 2, 3]
    assert rows[0].guess == "patch 0 (row 0, column 0)" and rows[0].truth == qa.format_value(
        "click_patch", a1.value, (4, 4)
    )
    assert rows[1].points is None and rows[1].truth == "skipped: this model has no [CLS] token"
    assert (rows[2].guess, rows[2].truth, rows[2].points) == ("17", "17", 1.0)  # the last response counts
    assert rows[2].as_dict()["score"] == "100%"
    earned, asked = qa.total_points(responses)
    assert asked == 2 and earned == pytest.approx(responses[0].points + 1.0)
    with pytest.raises(ValueError):
        qa.respond(1, q2, 3, a1)


def test_format_md_documents_every_field_and_its_example_is_valid() -> None:
    from vit_core.lessons import _LESSON_KEYS, _QUESTION_FIELDS, _STATE_KEYS, _STEP_KEYS, SHUFFLE_POSITIONS

    doc = (LESSONS_DIR / "FORMAT.md").read_text()
    example = doc.split("## A complete example")[1].split("```toml\n")[1].split("```")[0]
    lesson = load_lesson(example, name="example.toml")
    assert [s.question.kind for s in lesson.steps] == ["click_patch", "guess_probability"]
    documented = set(re.findall(r'`"?([^`\s"]+)"?`', doc))
    fields = {f for fs in _QUESTION_FIELDS.values() for f in fs}
    names = [*_LESSON_KEYS, *_STEP_KEYS, *_STATE_KEYS, *fields, *PAGES, *FOCUS, *QUESTION_KINDS, *NUMBER_ANSWERS]
    names += [*NEEDS, *SHUFFLE_POSITIONS]
    assert sorted(set(names) - documented) == []
    for name in sample_image_names():
        assert f'"{name}"' in doc
    for preset in TRAIN_PRESETS:
        assert f'`"{preset}"`' in doc
    assert f"{MAX_STEPS} steps" in doc and f"{MAX_BYTES:,} bytes" in doc
    cmd = re.search(r'python -c "(.*)" my_lesson.toml', doc).group(1)
    assert "validate(sys.argv[1])" in cmd


def test_every_focus_heading_is_a_heading_its_page_draws():
    """A lesson step brings its view into sight by finding the page's h1-h3 heading that starts with
    FOCUS_HEADINGS[focus]; a heading renamed on its page would leave the step unmarked."""
    from ui.lessons import FOCUS_HEADINGS
    from vit_core.lessons import FOCUS

    root = Path(__file__).resolve().parent.parent
    page_files = {p.stem.split("_", 1)[1]: p for p in (root / "pages").glob("*_*.py")}
    helpers = [*(root / "ui").glob("*.py"), *(root / "ui" / "training").glob("*.py")]
    assert set(FOCUS_HEADINGS) == set(FOCUS)
    for key, heading in FOCUS_HEADINGS.items():
        if heading is None:
            continue
        page = key.split(".")[0]
        sources = [page_files[page].read_text(), *(h.read_text() for h in helpers)]
        # st.title/header/subheader, or ui.page.section (an h3 in one markdown element)
        drawn = re.compile(r"(?:st\.(?:title|header|subheader)|section)\(\s*(?:#.*\n\s*)?f?[\"']" + re.escape(heading))
        assert any(drawn.search(s) for s in sources), f"{key}: no heading starting {heading!r}"
