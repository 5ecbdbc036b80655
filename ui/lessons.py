"""Lessons inside the app (issue 17): the lesson panel beside the live pages, and its session state.

A lesson (vit_core.lessons) is a list of steps; each step names a page, the state that page
should show, the view to bring into sight, a few sentences, and maybe one predict-then-reveal
question. While a lesson runs, app.py calls `lesson_panel()` on every run, after the sidebar
has built this run's `Current` and before the page draws its widgets:

- entering a step (Back, Next, Start, Resume) selects the step's model and image through the
  pickers (in the button's callback, so the sidebar of the next run uses them), then, once the
  new model's trace exists, writes the step's settings into the pages' widget keys
  (`resolve_state`), switches to the step's page and scrolls its view into sight, marked;
- the panel (in the sidebar; in presenter mode at the top of the main area, with the sidebar
  hidden and larger type) shows "Step 3 of 7", the text, the question, and Back / Next;
- a question's answer is computed from the model and image in use (`questions.answer`) before
  the learner guesses, and shown only after "Reveal";
- a step the model cannot run (`LessonSkip`) says why, is recorded for the summary and can be
  passed with Next.

The lesson and the step are kept in session state: leaving a lesson and starting it again on the
Lessons page resumes the same step, with the answers given so far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

import vit_plots as vp
from vit_core.analysis.questions import (
    Answer,
    LessonSkip,
    Response,
    answer,
    check_needs,
    format_value,
    resolve_state,
    respond,
    summary,
    total_points,
)
from vit_core.lessons import Lesson, LessonError, Step, bundled_lessons, load_lesson, validate

from . import models
from .compute import to_model, trace_on_model
from .images import choose_sample, sample_images
from .navigation import LESSONS_PATH, PAGES
from .page import clickable_chart
from .selection import Current
from .state import _KEPT, kept

# session_state keys
_ACTIVE = "_lesson_active"  # the running lesson's id (absent: no lesson running)
_PROGRESS = "_lesson_progress"  # lesson id -> Progress
_UPLOADED = "_lesson_uploaded"  # lesson id -> Lesson (a teacher's files, this session)
_ENTER = "_lesson_enter"  # a step just entered: its settings still to be applied (after the pickers)
_SWITCH = "_lesson_switch"  # go to the step's page in this run
_SCROLL = "_lesson_scroll"  # bring the step's view into sight once the page is drawn
_DRAWN = "_lesson_panel_drawn"  # the panel was drawn in this run (by app.py)
_FINISHED = "_lesson_finished"  # the lesson whose summary the Lessons page shows
_TRUTHS = "_lesson_truths"  # (lesson, step, model id, image key) -> Answer or the skip reason
PRESENTER_KEY = "lesson_presenter"

# The heading that starts each view (None: the top of the page); the page draws the heading.
FOCUS_HEADINGS: dict[str, str | None] = {
    "overview.pipeline": None,
    "overview.preprocessing": "What the model is given",
    "overview.prediction": "The prediction",
    "patches.grid": None,
    "patches.sequence": "From a grid to a sequence",
    "patches.matrix": "The patch matrix",
    "patches.size": "What if the patches were larger",
    "embeddings.conv_linear": "Conv2d and flatten",
    "embeddings.filters": "What the projection looks for",
    "embeddings.tokens": "The tokens on their way",
    "positions.tiles": "Which positions look alike",
    "positions.shuffle": "Shuffle the patches",
    "attention.overlay": None,
    "attention.heads": None,
    "attention.one_head": "One head, step by step",
    "attention.rollout": "Attention rollout",
    "attention.class_map": "Class-specific map",
    "attention.dino": "The last layer's heads",
    "attention.distance": "How far does each head look",
    "attention.entropy": "How far does each head look",
    "prediction.topk": None,
    "prediction.lens": "When does the answer form",
    "prediction.hide": "Hide patches and watch",
    "train.data": "1. Data",
    "train.settings": "2. Model and schedule",
    "train.live": "This session's run",
    "train.snapshots": "How the structures emerged",
    "train.results": "This session's run",
}

_PAGE_PATHS = {p.title: p.path for p in PAGES}
_PATH_TITLES = {p.path: p.title for p in PAGES}


@dataclass
class Progress:
    """Where a learner is in one lesson, and what they answered."""

    step: int = 0  # 0-based
    responses: dict[int, Response] = field(default_factory=dict)  # 0-based step -> last response
    skipped: dict[int, str] = field(default_factory=dict)  # 0-based step -> why
    done: bool = False


# ---------------------------------------------------------------- lessons and progress


@st.cache_resource(max_entries=1, show_spinner=False)
def _bundled() -> list[Lesson]:
    return bundled_lessons()


def all_lessons() -> dict[str, Lesson]:
    """The bundled lessons in their order, then this session's uploaded ones."""
    out = {lesson.id: lesson for lesson in _bundled()}
    out.update(st.session_state.get(_UPLOADED, {}))
    return out


def check_upload(name: str, data: bytes) -> tuple[Lesson | None, list[str]]:
    """A teacher's lesson file: the lesson, or every problem, each naming its line."""
    images = list(sample_images())
    problems = validate(data, name=name, images=images)
    if problems:
        return None, [str(p) for p in problems]
    try:
        lesson = load_lesson(data, name=name, images=images)
    except LessonError as e:  # pragma: no cover - validate() found nothing, so this does not happen
        return None, [str(p) for p in e.problems]
    if lesson.id in {b.id for b in _bundled()}:
        return None, [f"{name}: id '{lesson.id}' is a bundled lesson's id; give yours another id"]
    st.session_state.setdefault(_UPLOADED, {})[lesson.id] = lesson
    return lesson, []


_UPLOAD_RESULT = "_lesson_upload_result"


def on_upload(key: str) -> None:
    """The Lessons page's uploader changed (a callback): check the file, keep the outcome for the page."""
    up = st.session_state.get(key)
    if up is None:
        st.session_state.pop(_UPLOAD_RESULT, None)
        return
    lesson, problems = check_upload(up.name, up.getvalue())
    st.session_state[_UPLOAD_RESULT] = (up.name, lesson.title if lesson else "", problems)


def upload_result() -> tuple[str, str, list[str]] | None:
    """(file name, lesson title, problems) of the last uploaded lesson file, or None."""
    return st.session_state.get(_UPLOAD_RESULT)


def progress(lesson_id: str) -> Progress:
    return st.session_state.setdefault(_PROGRESS, {}).setdefault(lesson_id, Progress())


def active() -> tuple[Lesson, int] | None:
    """The running lesson and its 0-based step, or None."""
    lid = st.session_state.get(_ACTIVE)
    lesson = all_lessons().get(lid) if lid else None
    if lesson is None:
        return None
    return lesson, min(progress(lid).step, len(lesson.steps) - 1)


def page_path(page: str) -> str:
    """The script of a lesson's page name ("attention" -> pages/5_attention.py)."""
    from vit_core.lessons import PAGES as LESSON_PAGES

    return LESSONS_PATH if page == "lessons" else _PAGE_PATHS[LESSON_PAGES[page]]


def start(lesson_id: str, restart: bool = False) -> None:
    """Start a lesson, or resume it at the step the learner left (a callback)."""
    if restart:
        st.session_state.setdefault(_PROGRESS, {})[lesson_id] = Progress()
    p = progress(lesson_id)
    if p.done:
        st.session_state[_PROGRESS][lesson_id] = p = Progress()
    st.session_state[_ACTIVE] = lesson_id
    st.session_state.pop(_FINISHED, None)
    enter(p.step)


def leave() -> None:
    """Stop showing the lesson; its step and answers are kept for a later resume (a callback)."""
    st.session_state.pop(_ACTIVE, None)
    for k in (_ENTER, _SWITCH, _SCROLL):
        st.session_state.pop(k, None)


def finish() -> None:
    """After the last step: the Lessons page shows the summary (a callback)."""
    lid = st.session_state.get(_ACTIVE)
    if lid:
        progress(lid).done = True
        st.session_state[_FINISHED] = lid
    leave()
    st.session_state[_SWITCH] = LESSONS_PATH


def enter(i: int) -> None:
    """Go to step i of the running lesson (a callback): select its model and image now; its other
    settings follow in the next run, once the sidebar has the new model's trace."""
    lesson, _ = active() or (None, 0)
    if lesson is None:
        return
    i = max(0, min(i, len(lesson.steps) - 1))
    p = progress(lesson.id)
    p.step = i
    p.skipped.pop(i, None)
    step = lesson.steps[i]
    st.session_state[_ENTER] = i
    st.session_state[_SWITCH] = page_path(step.page)
    st.session_state[_SCROLL] = step.focus or ""
    why = select_model(step.state.model)
    if why:
        p.skipped[i] = why
    if step.state.image and step.state.image != "keep":
        choose_sample(step.state.image)


def newest_session_model() -> str | None:
    """The picker key of the model most recently trained in this session, or None."""
    names = list(models.session_models())
    return f"session:{names[-1]}" if names else None


def select_model(which: str | None) -> str | None:
    """Select a step's model in the sidebar picker; None when done, else why it cannot be."""
    if which in (None, "keep"):
        return None
    key = newest_session_model() if which == "session" else which
    if key is None:
        return "no model has been trained in this session yet: train one on the Train page (lesson 4, first steps)"
    if key not in models.model_options():
        return f"the {which} model is not available on this server"
    st.session_state[models.CHOICE] = key
    return None


# ---------------------------------------------------------------- applying a step's settings


def _set(key: str, value: Any) -> None:
    """A page setting for the page's next drawing: its widget key and its kept copy (ui.state)."""
    st.session_state[key] = value
    st.session_state.setdefault(_KEPT, {})[key] = value


def apply_settings(step: Step, cur: Current) -> None:
    """Write a step's settings into the pages' widget keys, checked against the model in use.

    Raises:
        LessonSkip: the model lacks what the step needs.
    """
    check_needs(cur.model, step.needs - {"training"})
    r = resolve_state(step.state, cur.model, cur.prep.trace)
    for key, value in (
        ("attn_layer", r.layer),
        ("attn_head", r.head),
        ("attn_query", r.query_token),
        ("roll_fusion", r.head_fusion),
        ("roll_start", r.start_layer),
        ("chefer_class", r.class_index),
        ("pos_patch", r.tile),
        ("shuffle_seed", r.shuffle_seed),
    ):
        if value is not None:
            _set(key, value)
    if r.discard_ratio is not None:
        _set("roll_discard", min(0.95, round(float(r.discard_ratio) / 0.05) * 0.05))
    q = step.question
    if q is not None and q.kind == "guess_probability":  # the Prediction page hides the same way
        _set("occ_mode", q.fill)
        _set("occ_rank", "class" if q.hide.by == "class map" else "rollout")
    if q is not None and q.kind == "yes_no_shuffle":
        _set("shuffle_seed", q.seed)
    if r.preset is not None:
        _set_preset(r.preset)


def _set_preset(preset: str) -> None:
    from vit_core.runs import APP_PRESETS

    from .training.settings import _FORM, KNOBS

    cfg = APP_PRESETS[preset]
    form = st.session_state.setdefault(_FORM, {})
    for key, value in [("train_preset", preset), *((k, getattr(cfg, a)) for k, a in KNOBS.items())]:
        st.session_state[key] = value
        form[key] = value


# ---------------------------------------------------------------- the answers


def truth(lesson: Lesson, i: int, cur: Current) -> Answer | str:
    """The answer to step i's question on the model and image in use (computed once), or why it cannot be."""
    key = (lesson.id, i, cur.model_id, cur.image_key, id(Answer))  # id(Answer): recomputed after a code reload
    store: dict = st.session_state.setdefault(_TRUTHS, {})
    if key not in store:
        q = lesson.steps[i].question
        with st.spinner("Asking the model..."):
            try:
                store[key] = answer(q, cur.model, to_model(cur.prep.x, cur.model), trace_on_model(cur))
            except LessonSkip as e:
                store[key] = e.reason
    return store[key]


def _guess_key(lesson: Lesson, i: int) -> str:
    return f"lesson_guess_{lesson.id}_{i}"


def _reveal(lesson: Lesson, i: int, guess: Any, t: Answer) -> None:
    q = lesson.steps[i].question
    progress(lesson.id).responses[i] = respond(i + 1, q, guess, t)


def question_widget(lesson: Lesson, i: int, cur: Current, box) -> None:
    """The guess, the Reveal button and, once answered, the model's answer, the verdict, the explanation."""
    q = lesson.steps[i].question
    p = progress(lesson.id)
    t = truth(lesson, i, cur)
    if isinstance(t, str):
        p.skipped[i] = t
        box.warning(f"This question is skipped: {t}.", icon=":material/skip_next:")
        return
    box.markdown(f"**Your prediction.** {q.prompt}")
    key = _guess_key(lesson, i)
    guess: Any = None
    with box:
        if q.kind == "click_patch":
            gh, gw = cur.grid
            n = gh * gw
            if st.session_state.get(key) is not None and not 0 <= st.session_state[key] < n:
                st.session_state[key] = None

            def _clicked(patch: int) -> None:
                st.session_state[key] = patch

            clickable_chart(
                vp.patch_grid_figure(
                    cur.prep.display,
                    cur.grid,
                    cur.patch_size,
                    numbers=False,
                    selected=st.session_state.get(key),
                    height=260,
                ),
                key=f"{key}_click",
                on_patch=_clicked,
            )
            st.session_state.setdefault(key, None)
            guess = st.number_input("Click the patch, or type its number", 0, n - 1, key=key)
        elif q.kind == "guess_probability":
            st.session_state.setdefault(key, 50)
            guess = st.slider("Probability, in percent", 0, 100, key=key)
        elif q.kind == "yes_no_shuffle":
            yes = st.radio("Will it change?", ["yes", "no"], index=None, horizontal=True, key=key)
            guess = None if yes is None else yes == "yes"
        elif q.kind == "pick_layer":
            if st.session_state.get(key) is not None and not 1 <= st.session_state[key] <= cur.num_layers:
                st.session_state[key] = None
            st.session_state.setdefault(key, None)
            guess = st.number_input(f"Layer (1 to {cur.num_layers})", 1, cur.num_layers, key=key)
        else:
            st.session_state.setdefault(key, None)
            guess = st.number_input(f"Your number{f' ({q.unit})' if q.unit else ''}", 0.0, step=1.0, key=key)
    r = p.responses.get(i)
    fresh = r is not None and (r.answer.value == t.value and r.answer.text == t.text)
    if not fresh:
        box.button(
            "Reveal the answer",
            key=f"{key}_reveal",
            type="primary",
            disabled=guess is None,
            on_click=_reveal,
            args=(lesson, i, guess, t),
            help="Give your prediction first." if guess is None else None,
        )
        return
    box.markdown(f"You said **{format_value(q.kind, r.guess, t.grid)}**: {r.verdict} ({r.points:.0%}).")
    box.success(t.text, icon=":material/fact_check:")
    if q.explain:
        box.caption(q.explain)


# ---------------------------------------------------------------- the panel


PRESENTER_CSS = """
<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"],
[data-testid="stExpandSidebarButton"] { display: none !important; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMain"] [data-testid="stMarkdownContainer"] li { font-size: 1.35rem; line-height: 1.55; }
[data-testid="stMain"] h1 { font-size: 2.9rem; }
[data-testid="stMain"] h2, [data-testid="stMain"] h3 { font-size: 2.0rem; }
[data-testid="stMain"] .katex { font-size: 1.35em; }
[data-testid="stMain"] label p { font-size: 1.15rem !important; }
</style>
"""
FOCUS_CSS = """
<style>
.lesson-focus { border-left: 6px solid #f0a500; padding-left: 0.6rem !important;
  background: linear-gradient(90deg, rgba(240,165,0,0.18), rgba(240,165,0,0)); }
</style>
"""


def _scroll_to(heading: str | None, to_top: bool = False) -> None:
    """Bring a heading of the page into sight and mark it (None: the top of the page).

    to_top: mark the heading but show the top of the page (presenter mode: the step is the screen).
    """
    js = f"""<script>
const doc = window.parent.document, want = {json.dumps(heading)}, toTop = {json.dumps(to_top)};
let tries = 0;
function find() {{
  return [...doc.querySelectorAll('[data-testid="stMain"] h1, [data-testid="stMain"] h2, [data-testid="stMain"] h3')]
    .find(e => e.textContent.trim().startsWith(want));
}}
function go() {{
  doc.querySelectorAll('.lesson-focus').forEach(e => e.classList.remove('lesson-focus'));
  const h = want === null ? null : find();
  if (want !== null && !h) {{ if (tries++ < 60) setTimeout(go, 250); return; }}
  if (h) h.classList.add('lesson-focus');
  if (want === null || toTop) {{
    const main = doc.querySelector('[data-testid="stMain"]');
    if (main) main.scrollTo({{top: 0, behavior: 'smooth'}});
    window.parent.scrollTo({{top: 0, behavior: 'smooth'}});
    return;
  }}
  h.scrollIntoView({{behavior: 'smooth', block: 'start'}});
}}
setTimeout(go, 300);
</script>"""
    st.iframe(js, height=1)  # our own script (the heading comes from FOCUS_HEADINGS), never a lesson file's text


def lesson_panel(cur: Current | None, page: str, side, main) -> None:
    """The running lesson beside the page (see the module docstring); nothing when none runs.

    Args:
        cur: this run's model, image and forward pass (None: the model cannot run on the image).
        page: the title of the page this run shows ("Attention").
        side: a container at the top of the sidebar; main: one at the top of the main area.
    """
    target = st.session_state.pop(_SWITCH, None) if not active() else None
    if target and _PATH_TITLES.get(target) != page:  # finish(): back to the Lessons page for the summary
        st.switch_page(target)
    now = active()
    if now is None:
        return
    lesson, i = now
    step = lesson.steps[i]
    p = progress(lesson.id)
    if st.session_state.get(_ENTER) == i and cur is not None:
        st.session_state.pop(_ENTER)
        if i not in p.skipped:
            try:
                apply_settings(step, cur)
            except LessonSkip as e:
                p.skipped[i] = e.reason
    target = st.session_state.pop(_SWITCH, None)
    if target and _PATH_TITLES.get(target) != page:
        st.switch_page(target)
    presenter = bool(kept(PRESENTER_KEY, False))
    box = main.container(border=True, key="lesson_presenter_box") if presenter else side.container(border=True)
    if presenter:
        st.html(PRESENTER_CSS)
    st.html(FOCUS_CSS)
    _panel(lesson, i, cur, page, box, presenter)
    if _SCROLL in st.session_state and page == _title(step.page):
        focus = st.session_state.pop(_SCROLL)
        with main:
            _scroll_to(FOCUS_HEADINGS.get(focus) if focus else None, to_top=presenter)


def _panel(lesson: Lesson, i: int, cur: Current | None, page: str, box, presenter: bool) -> None:
    step = lesson.steps[i]
    p = progress(lesson.id)
    n = len(lesson.steps)
    dots = "".join("●" if j <= i else "○" for j in range(n))
    with box:
        if presenter:  # one step per screen: the text on the left, the question and the buttons on the right
            left, right = st.columns([3, 2], gap="large")
        else:
            left = right = st.container()
        with left:
            st.caption(f":material/school: **{lesson.title}** · step {i + 1} of {n} {dots}")
            (st.subheader if presenter else st.markdown)(step.title if presenter else f"**{step.title}**")
            if i in p.skipped:
                st.warning(f"This step is skipped: {p.skipped[i]}.", icon=":material/skip_next:")
            else:
                st.markdown(step.text)
                heading = FOCUS_HEADINGS.get(step.focus or "")
                if presenter and heading and _title(step.page) == page:
                    st.caption(f":material/arrow_downward: Below: *{heading}...*, marked.")
                if _title(step.page) != page:
                    st.page_link(
                        page_path(step.page), label=f"Go to {_title(step.page)}", icon=":material/arrow_forward:"
                    )
        with right:
            if i not in p.skipped and step.question is not None and cur is not None:
                question_widget(lesson, i, cur, st.container())
            c = st.columns(2)
            c[0].button("Back", key="lesson_back", on_click=enter, args=(i - 1,), disabled=i == 0, width="stretch")
            if i + 1 < n:
                c[1].button("Next", key="lesson_next", type="primary", on_click=enter, args=(i + 1,), width="stretch")
            else:
                c[1].button("Finish", key="lesson_finish", type="primary", on_click=finish, width="stretch")
            c = [st.container(), st.container()]
            c[0].toggle(
                "Presenter mode", key=PRESENTER_KEY, on_change=_to_top, help="Larger type, no sidebar: for a projector."
            )
            c[1].button(
                "Leave the lesson",
                key="lesson_leave",
                type="tertiary",
                on_click=leave,
                help="Come back to this step from the Lessons page.",
            )


def _to_top() -> None:
    """Presenter mode on or off: show the step's view again (the panel moves)."""
    lid = st.session_state.get(_ACTIVE)
    if lid:
        lesson = all_lessons().get(lid)
        if lesson is not None:
            st.session_state[_SCROLL] = lesson.steps[min(progress(lid).step, len(lesson.steps) - 1)].focus or ""


def _title(page: str) -> str:
    from vit_core.lessons import PAGES as LESSON_PAGES

    return LESSON_PAGES[page]


def panel_drawn() -> bool:
    """Whether app.py drew the panel in this run (AppTest's later runs execute only the page); asks once per run."""
    return bool(st.session_state.pop(_DRAWN, None))


def mark_panel_drawn() -> None:
    """app.py drew the panel in this run (see `panel_drawn`)."""
    st.session_state[_DRAWN] = True


def end_of_run() -> None:
    st.session_state.pop(_DRAWN, None)


# ---------------------------------------------------------------- the summary


def summary_rows(lesson_id: str) -> list[dict[str, Any]]:
    """The closing table of a lesson: every answered question's guess against the model's answer."""
    p = progress(lesson_id)
    rows = summary(list(p.responses.values()), {i + 1: why for i, why in p.skipped.items()})
    return [r.as_dict() for r in rows]


def points(lesson_id: str) -> tuple[float, int]:
    return total_points(list(progress(lesson_id).responses.values()))


def finished() -> str | None:
    return st.session_state.get(_FINISHED)
