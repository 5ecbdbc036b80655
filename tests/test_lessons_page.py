"""The Lessons page through Streamlit's AppTest: the list, a lesson started, its questions answered and
revealed (equal to vit_core's own computation), Next / Back, leave and resume, a step the model cannot
run skipped with its reason, a teacher's file (good, and malformed with line-numbered problems), and the
closing summary.

AppTest runs app.py on the first run only; later runs execute just the page script, so the lesson
panel is drawn by the Lessons page itself (app.py draws it in the sidebar of every page in a browser:
tests/test_browser_lessons.py). A step on another page switches there; the tests come back to the
Lessons page to answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from vit_core import load_checkpoint, load_image, preprocess
from vit_core.analysis.questions import answer
from vit_core.lessons import bundled_lessons, validate

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
LESSONS = "pages/11_lessons.py"
BUNDLED = ROOT / "assets" / "vit_cifar10.safetensors"
CAT = next((ROOT / "assets" / "samples" / "cifar10").glob("cat.*"))
TIMEOUT = 300
L1 = "vit_in_20_minutes"

pytestmark = pytest.mark.skipif(not BUNDLED.exists(), reason="no bundled model")


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def lessons_page(at: AppTest) -> AppTest:
    at.switch_page(LESSONS).run()
    ok(at)
    return at


def keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button}


def truth_text(lesson_id: str, step: int) -> str:
    """The revealed answer of a step, computed from vit_core alone (bundled model, the cat sample)."""
    lesson = {x.id: x for x in bundled_lessons()}[lesson_id]
    model = load_checkpoint(BUNDLED)
    x = preprocess(load_image(CAT.read_bytes()), model)
    with torch.no_grad():
        return answer(lesson.steps[step].question, model, x).text


@pytest.fixture(scope="module")
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = "bundled"
    at.run()
    ok(at)
    at.run()
    return lessons_page(at)


def test_lists_every_bundled_lesson(app):
    assert app.title[0].value == "Lessons"
    for lesson in bundled_lessons():
        assert f"lesson_start_{lesson.id}" in keys(app)
    assert "lesson_next" not in keys(app)  # no lesson running yet


def test_start_predict_then_reveal_equals_the_library(app):
    app.button(key=f"lesson_start_{L1}").click().run()
    ok(app)
    lessons_page(app)  # step 1 is on the Overview: come back here, where AppTest draws the panel
    assert {"lesson_next", "lesson_back", "lesson_leave"} <= keys(app)
    reveal = app.button(key=f"lesson_guess_{L1}_0_reveal")
    assert reveal.disabled  # no guess yet: nothing to reveal
    assert not app.success
    app.number_input(key=f"lesson_guess_{L1}_0").set_value(50.0).run()
    app.button(key=f"lesson_guess_{L1}_0_reveal").click().run()
    ok(app)
    assert [s.value for s in app.success] == [truth_text(L1, 0)]
    assert any("You said **50**" in m.value for m in app.markdown)


def test_next_back_and_a_click_question(app):
    for _ in range(4):  # to step 5: the Attention page, [CLS] in the last layer
        app.button(key="lesson_next").click().run()
        ok(app)
        lessons_page(app)
    assert any("step 5 of 7" in c.value for c in app.caption)
    # the step's state went into the Attention page's settings, and the page shows them
    kept = app.session_state["_kept_settings"]
    assert (kept["attn_layer"], kept["attn_head"], kept["attn_query"]) == (6, "mean", 0)
    app.switch_page("pages/5_attention.py").run()
    ok(app)
    assert app.slider(key="attn_layer").value == 6
    assert app.selectbox(key="attn_head").value == "mean" and app.selectbox(key="attn_query").value == 0
    lessons_page(app)
    # a click on the patch grid sets this input (the same key); AppTest types it
    app.number_input(key=f"lesson_guess_{L1}_4").set_value(0).run()
    app.button(key=f"lesson_guess_{L1}_4_reveal").click().run()
    ok(app)
    assert [s.value for s in app.success] == [truth_text(L1, 4)]
    app.button(key="lesson_back").click().run()
    lessons_page(app)
    assert any("step 4 of 7" in c.value for c in app.caption)
    app.button(key="lesson_next").click().run()
    lessons_page(app)
    assert [s.value for s in app.success] == [truth_text(L1, 4)]  # the answer is kept


def test_leave_and_resume_the_same_step(app):
    app.button(key="lesson_leave").click().run()
    ok(app)
    assert "lesson_next" not in keys(app)
    resume = app.button(key=f"lesson_resume_{L1}")
    assert resume.label == "Resume at step 5"
    resume.click().run()
    lessons_page(app)
    assert any("step 5 of 7" in c.value for c in app.caption)
    assert [s.value for s in app.success] == [truth_text(L1, 4)]


def test_a_malformed_lesson_shows_every_problem_with_its_line(app):
    bad = b'id = "Bad Id"\ntitle = "x"\nminutes = 5\nsummary = "s"\n\n[[steps]]\ntitle = "one"\npage = "atention"\ntext = "t"\n'
    app.file_uploader(key="lesson_upload").upload("bad.toml", bad, "application/toml").run()
    ok(app)
    expected = [str(p) for p in validate(bad, name="bad.toml")]
    assert expected and all("line" in e for e in expected)
    shown = [c.value for c in app.code if c.value.startswith("bad.toml")]
    assert [v.splitlines() for v in shown] == [expected]
    assert any("bad.toml was not loaded" in e.value for e in app.error)


def test_a_step_the_model_cannot_run_is_skipped_and_summarised(app):
    mine = b"""id = "too_deep"
title = "Too deep"
minutes = 2
summary = "A step this model cannot show."

[[steps]]
title = "Layer 20"
page = "attention"
text = "Look at layer 20."
state = { layer = 20 }

[[steps]]
title = "The count"
page = "lessons"
text = "How many patches?"

[steps.question]
kind = "number"
answer = "num_patches"
prompt = "How many patches?"
"""
    app.file_uploader(key="lesson_upload").upload("mine.toml", mine, "application/toml").run()
    ok(app)
    assert any("Loaded **Too deep**" in s.value for s in app.success)
    app.button(key="lesson_start_too_deep").click().run()
    lessons_page(app)
    warnings = [w.value for w in app.warning]
    assert any("skipped: this step looks at layer 20, but this model has 6 layers" in w for w in warnings), warnings
    app.button(key="lesson_next").click().run()
    ok(app)
    app.number_input(key="lesson_guess_too_deep_1").set_value(64.0).run()
    app.button(key="lesson_guess_too_deep_1_reveal").click().run()
    app.button(key="lesson_finish").click().run()
    lessons_page(app)
    table = app.dataframe[0].value
    assert list(table["step"]) == [1, 2]
    assert table["the model"][0].startswith("skipped: this step looks at layer 20")
    assert table["your guess"][1] == "64" and table["the model"][1] == "64" and table["score"][1] == "100%"


def test_lesson_4_with_a_model_trained_in_this_session_answers_from_that_model():
    """Lesson 4's second half looks at "your model": with a session model registered (here the bundled
    weights moved by seeded noise, a stand-in for a short run), every step runs and each revealed
    answer is the library's answer for that model, not the bundled one."""
    from ui.models import SessionModel

    lesson = {x.id: x for x in bundled_lessons()}["train_one_yourself"]
    mine = load_checkpoint(BUNDLED).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in mine.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = preprocess(load_image(CAT.read_bytes()), mine)

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = "bundled"
    at.run()
    ok(at)
    at.session_state["session_models"] = {"my run": SessionModel(mine, "session:test-lesson-4")}
    lessons_page(at)
    at.button(key="lesson_start_train_one_yourself").click().run()
    lessons_page(at)
    guesses = {"yes_no_shuffle": "yes", "pick_layer": 1, "click_patch": 0, "guess_probability": 40}
    revealed = 0
    for i, step in enumerate(lesson.steps):
        assert any(f"step {i + 1} of {len(lesson.steps)}" in c.value for c in at.caption)
        assert not at.warning, [w.value for w in at.warning]  # nothing skipped: the session model exists
        if step.question is not None:
            key = f"lesson_guess_{lesson.id}_{i}"
            widget = at.radio(key=key) if step.question.kind == "yes_no_shuffle" else None
            if widget is None:
                widget = at.slider(key=key) if step.question.kind == "guess_probability" else at.number_input(key=key)
            widget.set_value(guesses[step.question.kind]).run()
            at.button(key=f"{key}_reveal").click().run()
            ok(at)
            with torch.no_grad():
                want = answer(step.question, mine, x).text
            assert [s.value for s in at.success] == [want], (i, step.question.kind)
            revealed += 1
        if i + 1 < len(lesson.steps):
            at.button(key="lesson_next").click().run()
            ok(at)
            lessons_page(at)
    assert revealed == 4
    assert at.session_state["model_choice"] == "session:my run"
