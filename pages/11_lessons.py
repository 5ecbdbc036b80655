"""Lessons: guided tours of the app with predict-then-reveal questions (issue 17)."""

import streamlit as st

from ui import lessons
from ui.page import header
from ui.session import current
from vit_core.analysis.questions import model_lacks
from vit_core.lessons import LESSONS_DIR, MAX_BYTES, NEEDS

cur = current()
if not lessons.panel_drawn():  # a run of this page without app.py (AppTest): draw the lesson here
    lessons.lesson_panel(cur, "Lessons", st.sidebar.container(), st.container())
header(
    "Lessons",
    "Guided tours of the explorer. Each step opens a page, sets it up (model, image, layer, head, ...) and "
    "points at one view; most steps ask you to **predict** something first, and then reveal what the model "
    "in use actually does, computed live, never canned. The lesson stays in the sidebar while you look "
    "around: *Leave* it and come back here to resume the same step. *Presenter mode* enlarges the type and "
    "hides the sidebar, for a projector.",
)

done = lessons.finished()
if done and done in lessons.all_lessons():
    lesson = lessons.all_lessons()[done]
    st.subheader(f"Your guesses against the model: {lesson.title}")
    rows = lessons.summary_rows(done)
    pts, answered = lessons.points(done)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
        st.markdown(
            f"**{pts:.1f} of {answered} points** over the questions answered. The model's answers come from "
            "the model and image that were in use at each step: try another image or model and walk it again."
        )
    else:
        st.caption("No question was answered in this lesson.")

now = lessons.active()
if now is not None:
    lesson, i = now
    st.info(
        f"Running: **{lesson.title}**, step {i + 1} of {len(lesson.steps)}. The lesson is in the sidebar.",
        icon=":material/school:",
    )

st.subheader("Choose a lesson")
for lesson in lessons.all_lessons().values():
    p = lessons.progress(lesson.id)
    with st.container(border=True):
        c1, c2 = st.columns([4, 1])
        c1.markdown(
            f"**{lesson.title}** · {lesson.minutes} min · {len(lesson.steps)} steps, {lesson.num_questions} questions"
        )
        c1.markdown(lesson.summary)
        lacks = model_lacks(cur.model, lesson.all_needs() - {"training"})
        if lacks:
            c1.caption(
                "With the model in use some steps will be skipped: "
                + "; ".join(f"{NEEDS[k]} ({why})" for k, why in lacks.items())
                + "."
            )
        if "training" in lesson.needs:
            c1.caption(f"Needs {NEEDS['training']}.")
        started = p.step > 0 or p.responses or p.skipped
        if started and not p.done:
            c2.button(
                f"Resume at step {p.step + 1}",
                key=f"lesson_resume_{lesson.id}",
                type="primary",
                on_click=lessons.start,
                args=(lesson.id,),
                width="stretch",
            )
            c2.button(
                "Start over",
                key=f"lesson_restart_{lesson.id}",
                on_click=lessons.start,
                args=(lesson.id, True),
                width="stretch",
            )
        else:
            c2.button(
                "Start",
                key=f"lesson_start_{lesson.id}",
                type="primary",
                on_click=lessons.start,
                args=(lesson.id, True),
                width="stretch",
            )

st.subheader("Your own lesson")
st.markdown(
    "A lesson is one small TOML file: a few lines about the lesson, then its steps. Write your own for your "
    "class and load it here; it stays for this session. A file with mistakes is not loaded, and every "
    "problem is listed with its line."
)
st.file_uploader(
    f"A lesson file (.toml, at most {MAX_BYTES // 1024} KB)",
    type=["toml"],
    key="lesson_upload",
    on_change=lessons.on_upload,
    args=("lesson_upload",),
)
checked = lessons.upload_result()
if checked is not None:
    name, title, problems = checked
    if problems:
        st.error(
            f"{name} was not loaded: {len(problems)} problem{'s' if len(problems) != 1 else ''}.",
            icon=":material/error:",
        )
        st.code("\n".join(problems), language=None, wrap_lines=True)
    else:
        st.success(f"Loaded **{title}** from {name}: it is in the list above.", icon=":material/check:")
with st.expander("How to write a lesson (lessons/FORMAT.md)"):
    st.markdown((LESSONS_DIR / "FORMAT.md").read_text(encoding="utf-8"))
