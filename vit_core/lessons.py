"""Lessons: guided tours of the app, one small TOML file each (format: lessons/FORMAT.md).

A lesson is data: metadata and an ordered list of steps. Each step names the page it shows, the
app state it needs (model, image, layer, head, query patch, rollout settings, ...), the view to
bring into sight, 2-4 sentences of text, and optionally one predict-then-reveal question whose
answer `vit_core.analysis.questions` computes from the model and image in use.

    lesson = load_lesson(Path("lessons/why_positions.toml"))  # or the text of an uploaded file
    problems = validate(uploaded_bytes, name="my_lesson.toml")  # [] when the file is good
    for problem in problems: print(problem)  # "my_lesson.toml line 14: step 3: unknown page ..."

Every problem names the line: tomllib's syntax errors carry theirs, and for the checks made here
the line of the offending key or table is found in the text. Layers in a lesson file are counted
from 1, as the Attention page's slider counts them; heads and patches from 0, as the app numbers
them. No Streamlit and no torch here: the page that runs lessons reads these dataclasses.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VitCoreError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # the same parser, as a package
    except ModuleNotFoundError:
        tomllib = None

ROOT = Path(__file__).resolve().parent.parent
LESSONS_DIR = ROOT / "lessons"  # the bundled lessons
SAMPLES_DIR = ROOT / "assets" / "samples"  # the bundled sample images a step may select
SAMPLE_IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")

MAX_BYTES = 64 * 1024  # a lesson file larger than this is refused (teachers upload them)
MAX_STEPS = 60
MAX_TITLE_CHARS = 120
MAX_TEXT_CHARS = 1500  # a step's text (2-4 sentences; formulas make it longer than prose)
MAX_PROMPT_CHARS = 500

# The app's pages, by the name a lesson uses; the value is the page's title in the navigation.
PAGES: dict[str, str] = {
    "overview": "Overview",
    "patches": "Patches",
    "embeddings": "Embeddings",
    "positions": "Position embeddings",
    "attention": "Attention",
    "prediction": "Prediction",
    "train": "Train",
    "lessons": "Lessons",  # text only: the lesson page itself (an introduction, a wrap-up)
}

# The views a step can bring into sight: anchor -> (page, the section it marks on that page).
FOCUS: dict[str, tuple[str, str]] = {
    "overview.pipeline": ("overview", "the five steps with live shapes and parameter counts"),
    "overview.preprocessing": ("overview", "What the model is given: preprocessing"),
    "overview.prediction": ("overview", "The prediction"),
    "patches.grid": ("patches", "the numbered patch grid"),
    "patches.sequence": ("patches", "From a grid to a sequence (the animation)"),
    "patches.matrix": ("patches", "The patch matrix"),
    "patches.size": ("patches", "What if the patches were larger or smaller?"),
    "embeddings.conv_linear": ("embeddings", "Conv2d and flatten + Linear are the same map"),
    "embeddings.filters": ("embeddings", "What the projection looks for: its filters"),
    "embeddings.tokens": ("embeddings", "The tokens on their way through the layers"),
    "positions.tiles": ("positions", "Which positions look alike (the similarity tiles)"),
    "positions.shuffle": ("positions", "Shuffle the patches"),
    "attention.overlay": ("attention", "the overlay of one layer, head and query"),
    "attention.heads": ("attention", "all heads of the layer side by side"),
    "attention.one_head": ("attention", "One head, step by step"),
    "attention.rollout": ("attention", "Attention rollout: follow attention through all layers"),
    "attention.class_map": ("attention", "Class-specific map: what speaks for one class"),
    "attention.dino": ("attention", "The last layer's heads, DINO style"),
    "attention.distance": ("attention", "How far does each head look? (mean attention distance)"),
    "attention.entropy": ("attention", "the entropy of each head"),
    "prediction.topk": ("prediction", "the top-k probabilities"),
    "prediction.lens": ("prediction", "When does the answer form? The logit lens"),
    "prediction.hide": ("prediction", "Hide patches and watch the prediction"),
    "train.data": ("train", "1. Data"),
    "train.settings": ("train", "2. Model and schedule (the presets)"),
    "train.live": ("train", "the run in progress: status, progress, curves"),
    "train.snapshots": ("train", "How the structures emerged (the snapshot scrubber)"),
    "train.results": ("train", "the finished run and its 'Use this model' button"),
}

# What a lesson or a step can need. The model-side needs are checked by
# `vit_core.analysis.questions.model_lacks`; "training" is for the page to check.
NEEDS: dict[str, str] = {
    "class_token": "a [CLS] token",
    "classifier": "a classifier head",
    "class_names": "named classes",
    "position_embeddings": "position embeddings",
    "attention": "attention between the tokens of one image",
    "training": "training on this server (CIFAR-10 data)",
}

MODELS = ("keep", "bundled", "untrained", "session")  # session: the model trained in this session
HEAD_FUSIONS = ("mean", "max", "min")  # as vit_core.analysis.attention.HEAD_FUSIONS
FILLS = ("mean", "zero", "drop")  # as vit_core.analysis.whatif.OCCLUSION_MODES
TRAIN_PRESETS = ("demo", "quick", "bundled", "long")  # as vit_core.runs.APP_PRESETS
SHUFFLE_POSITIONS = {
    "follow": "each patch keeps its own position embedding (positions follow the content)",
    "slot": "the shuffled picture is fed as a new image (each slot gets the slot's position)",
    "none": "no position embeddings at all, shuffled against unshuffled",
}
HIDE_BY = ("rollout", "class map")
CLICK_MAPS = ("attention", "rollout")

# Named answers of a `number` question: name -> what it is (computed in questions.number_answer).
NUMBER_ANSWERS: dict[str, str] = {
    "num_patches": "patches the image is cut into (gh x gw)",
    "num_tokens": "tokens in the sequence: the patches plus [CLS] and any other prefix tokens",
    "patch_values": "numbers in one flattened patch (C x P x P)",
    "patches_at_half_patch_size": "patches the image would give if the patch side were halved",
    "embed_dim": "the width D of every token",
    "num_layers": "encoder blocks L",
    "num_heads": "attention heads per block",
    "head_dim": "the width d of one head",
    "num_params": "parameters of the model",
    "block_params_percent": "share of the parameters inside the encoder blocks, in percent",
    "attention_weights_per_head": "attention weights one head computes in one layer (N x N)",
    "attention_row_sum": "the sum of one query's attention weights over all keys (first head, last layer, [CLS])",
    "cls_self_attention_percent": "the share of [CLS]'s attention (last layer, mean of heads) on itself, in percent",
    "top_probability": "the model's probability for its top class, in percent",
}
NUMBER_NEEDS: dict[str, tuple[str, ...]] = {
    "attention_row_sum": ("attention",),
    "cls_self_attention_percent": ("class_token", "attention"),
    "top_probability": ("classifier",),
}

# Question kinds -> the fields each takes besides `kind`, `prompt` and `explain` (with defaults).
QUESTION_KINDS: dict[str, str] = {
    "click_patch": "click the patch [CLS] attends to most (last layer, or any layer; or rollout)",
    "guess_probability": "guess the top class's probability after hiding patches, in percent",
    "yes_no_shuffle": "will shuffling the patches change the prediction?",
    "pick_layer": "which layer's heads look furthest (mean attention distance)?",
    "number": "guess a number the model determines",
}
_QUESTION_FIELDS: dict[str, tuple[str, ...]] = {
    "click_patch": ("layer", "head_fusion", "map"),
    "guess_probability": ("hide", "fill", "target"),
    "yes_no_shuffle": ("seed", "positions"),
    "pick_layer": (),
    "number": ("answer", "unit"),
}
_COMMON_QUESTION_FIELDS = ("kind", "prompt", "explain")

_LESSON_KEYS = ("id", "title", "minutes", "summary", "needs", "order", "steps")
_STEP_KEYS = ("title", "text", "page", "focus", "state", "question")
_STATE_KEYS = (
    "model",
    "image",
    "layer",
    "head",
    "query_patch",
    "head_fusion",
    "discard_ratio",
    "start_layer",
    "class",
    "tile",
    "shuffle_seed",
    "preset",
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,59}$")
_HIDE_RE = re.compile(r"^\s*top\s+(\d+(?:\.\d+)?)\s*%\s+by\s+(rollout|class\s+map)\s*$", re.IGNORECASE)


class LessonError(VitCoreError):
    """A lesson file that cannot be used; `problems` lists every problem found, each with its line."""

    def __init__(self, problems: list[LessonProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LessonSkip(VitCoreError):
    """A step that cannot run with this model (or image): the page says why and skips the step.

    `need` names what is missing (a key of `NEEDS`, or "" when it is something else, such as a
    layer the model does not have).
    """

    def __init__(self, reason: str, need: str = "") -> None:
        self.reason = reason
        self.need = need
        super().__init__(reason)


@dataclass(frozen=True)
class LessonProblem:
    """One problem in a lesson file."""

    source: str  # the file's name, as given to `validate` / `load_lesson`
    line: int | None  # 1-based line in the file; None for the file as a whole (e.g. too large)
    message: str
    step: int | None = None  # 1-based step number, when the problem is inside a step

    def __str__(self) -> str:
        where = self.source + (f" line {self.line}" if self.line is not None else "")
        return f"{where}: " + (f"step {self.step}: " if self.step is not None else "") + self.message


@dataclass(frozen=True)
class HideSpec:
    """Which patches a `guess_probability` question hides: a fixed list, or the top share of a map."""

    patches: tuple[int, ...] = ()  # patch indices, row-major from 0 (used when top_percent is None)
    top_percent: float | None = None  # hide the top share of the patches by `by` (at least one patch)
    by: str | None = None  # "rollout" or "class map"

    def describe(self) -> str:
        if self.top_percent is None:
            shown = ", ".join(map(str, self.patches[:12])) + (" ..." if len(self.patches) > 12 else "")
            return f"patch{'es' if len(self.patches) != 1 else ''} {shown}"
        return f"the top {self.top_percent:g}% of the patches by {self.by}"

    def count(self, num_patches: int) -> int:
        """How many patches this hides on a grid of `num_patches` (the top share: at least 1)."""
        if self.top_percent is None:
            return len(self.patches)
        return max(1, math.floor(num_patches * self.top_percent / 100.0 + 1e-9))  # 10% of 64: 6, as n // 10


@dataclass(frozen=True)
class StepState:
    """The app state a step sets. None leaves a setting as the learner has it."""

    model: str | None = None  # "bundled", "untrained", "session" (trained this session); None/"keep": as is
    image: str | None = None  # a sample's menu name ("CIFAR-10: cat"); None/"keep": as is
    layer: int | str | None = None  # 1-based layer, or "last"
    head: int | str | None = None  # 0-based head, or "mean"
    query_patch: int | str | None = None  # 0-based patch, "cls" or "center"
    head_fusion: str | None = None  # rollout: "mean", "max" or "min"
    discard_ratio: float | None = None  # rollout: share in [0, 1) of patch keys dropped per row
    start_layer: int | None = None  # rollout: first layer multiplied in, 1-based
    class_name: str | None = None  # class map: a class name or "predicted" (`class` in the file)
    tile: int | str | None = None  # position tiles: the selected tile, 0-based patch, "center" or "corner"
    shuffle_seed: int | None = None  # the Position embeddings page's shuffle seed
    preset: str | None = None  # the Train page's preset: "demo", "quick", "bundled" or "long"

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class Question:
    """A predict-then-reveal question. Fields that a kind does not use keep their defaults."""

    kind: str  # one of QUESTION_KINDS
    prompt: str  # what the learner is asked, Markdown
    explain: str = ""  # optional text shown with the answer
    layer: int | str = "last"  # click_patch: 1-based layer or "last"
    head_fusion: str = "mean"  # click_patch: how the heads are fused ("mean", "max", "min")
    map: str = "attention"  # click_patch: "attention" (the layer's [CLS] row) or "rollout"
    hide: HideSpec = field(default_factory=lambda: HideSpec(top_percent=10.0, by="rollout"))  # guess_probability
    fill: str = "mean"  # guess_probability: how hidden patches are filled ("mean", "zero", "drop")
    target: str = "predicted"  # guess_probability: the class whose probability is asked, or "predicted"
    seed: int = 0  # yes_no_shuffle: the shuffle's seed
    positions: str = "follow"  # yes_no_shuffle: "follow", "slot" or "none" (SHUFFLE_POSITIONS)
    answer: str = ""  # number: a key of NUMBER_ANSWERS
    unit: str = ""  # number: shown after the value ("patches", "%")


@dataclass(frozen=True)
class Step:
    """One screen of a lesson."""

    title: str
    text: str  # 2-4 sentences, Markdown with $formulas$
    page: str  # a key of PAGES
    focus: str | None = None  # a key of FOCUS on the same page
    state: StepState = field(default_factory=StepState)
    question: Question | None = None
    line: int | None = None  # where the step starts in its file

    @property
    def needs(self) -> frozenset[str]:
        """What this step needs from the model (and the app), from its state, focus and question."""
        return frozenset(step_needs(self))


@dataclass(frozen=True)
class Lesson:
    """A lesson: metadata and its steps, in order."""

    id: str
    title: str
    minutes: int
    summary: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()  # what the whole lesson needs (keys of NEEDS)
    order: int = 100  # position in the list of lessons (smaller first; ties by title)
    source: str = "lesson.toml"  # the file it came from

    @property
    def num_questions(self) -> int:
        return sum(s.question is not None for s in self.steps)

    def all_needs(self) -> frozenset[str]:
        """The lesson's own needs and every step's."""
        out = set(self.needs)
        for s in self.steps:
            out |= s.needs
        return frozenset(out)


def step_needs(step: Step) -> set[str]:
    """The needs a step implies: its question's kind and fields, its state, its focus and page."""
    needs: set[str] = set()
    st = step.state
    if st.query_patch == "cls":
        needs.add("class_token")
    if st.class_name is not None:
        needs.add("classifier")
        if st.class_name != "predicted":
            needs.add("class_names")
    if step.focus == "positions.tiles" or (st.tile is not None):
        needs.add("position_embeddings")
    if step.page == "train" or st.model == "session":
        needs.add("training")
    q = step.question
    if q is None:
        return needs
    if q.kind == "click_patch":
        needs |= {"class_token", "attention"}
    elif q.kind == "guess_probability":
        needs.add("classifier")
        if q.target != "predicted":
            needs.add("class_names")
        if q.hide.by == "rollout":
            needs.add("attention")
    elif q.kind == "yes_no_shuffle":
        needs.add("classifier")
        if q.positions != "none":
            needs.add("position_embeddings")
    elif q.kind == "pick_layer":
        needs.add("attention")
    elif q.kind == "number":
        needs |= set(NUMBER_NEEDS.get(q.answer, ()))
    return needs


def sample_image_names(samples_dir: Path = SAMPLES_DIR) -> list[str]:
    """The bundled sample images as the sidebar's menu names them ("CIFAR-10: cat", "Photo: coffee")."""
    out: list[str] = []
    for folder, prefix in (("cifar10", "CIFAR-10"), ("photos", "Photo")):
        d = samples_dir / folder
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.suffix.lower().lstrip(".") in SAMPLE_IMAGE_TYPES:
                    out.append(f"{prefix}: {p.stem.replace('_', ' ')}")
    return out


# ---------------------------------------------------------------- lines of keys in the TOML text

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_KEY_LINE_RE = re.compile(rf"^\s*({_DOTTED})\s*=(.*)$")
_HEADER_RE = re.compile(rf"^\s*(\[\[|\[)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_INLINE_KEY_RE = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")


def _key_parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_KEY, dotted)]


def key_lines(text: str) -> dict[tuple, int]:
    """Where each key and table of a TOML text starts: path -> 1-based line.

    Paths index arrays of tables by position: `("steps", 2, "state", "layer")` is the `layer`
    key of the third `[[steps]]` table's `state` (as a `[steps.state]` table, a dotted key or an
    inline table). A tolerant scanner, for error messages only: it skips comments and
    multi-line strings and never fails; a path it cannot place is simply absent.
    """
    lines: dict[tuple, int] = {}
    arrays: dict[tuple, int] = {}  # array-of-tables name path -> current index
    table: tuple = ()
    in_string: str | None = None  # the delimiter of the multi-line string we are in
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if in_string in raw:
                in_string = None
            continue
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER_RE.match(raw)
        if header:
            parts = _key_parts(header.group(2))
            is_array = header.group(1) == "[["
            path: list = []
            for i, part in enumerate(parts):
                names = tuple(parts[: i + 1])
                path.append(part)
                last = i == len(parts) - 1
                if last and is_array:
                    arrays[names] = arrays.get(names, -1) + 1
                    for other in [a for a in arrays if len(a) > len(names) and a[: len(names)] == names]:
                        del arrays[other]  # a new parent element starts its own sub-arrays
                    path.append(arrays[names])
                elif names in arrays:
                    path.append(arrays[names])
            table = tuple(path)
            lines.setdefault(table, number)
            continue
        m = _KEY_LINE_RE.match(raw)
        if not m:
            continue
        key_path = table + tuple(_key_parts(m.group(1)))
        lines.setdefault(key_path, number)
        value = m.group(2).strip()
        if value.startswith("{"):
            for inner in _INLINE_KEY_RE.finditer(value):
                lines.setdefault(key_path + tuple(_key_parts(inner.group(1))), number)
        for delim in ('"""', "'''"):
            if value.startswith(delim) and value.count(delim) == 1:
                in_string = delim
    return lines


# ---------------------------------------------------------------- the checks


class _Checker:
    """Collects problems, each placed on the line of the key (or the nearest enclosing table)."""

    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[LessonProblem] = []

    def line_of(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def add(self, path: tuple, message: str, step: int | None = None) -> None:
        self.problems.append(LessonProblem(self.source, self.line_of(path), message, step))


def _suggest(value: str, allowed: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _one_of(value: Any, allowed: Any, what: str, plural: str) -> str | None:
    """None if `value` is one of `allowed`, else the message."""
    if isinstance(value, str) and value in allowed:
        return None
    if not isinstance(value, str):
        return f"{what} must be a string, one of: {', '.join(allowed)}; not {value!r}"
    return f"unknown {what} '{value}' ({plural}: {', '.join(allowed)}){_suggest(value, allowed)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_keys(c: _Checker, table: dict, allowed: tuple[str, ...], path: tuple, what: str, step: int | None) -> None:
    for key in table:
        if key not in allowed:
            c.add(
                path + (key,),
                f"unknown key '{key}' in {what} (allowed: {', '.join(allowed)}){_suggest(key, allowed)}",
                step,
            )


def _text(
    c: _Checker, table: dict, key: str, path: tuple, step: int | None, max_chars: int, required: bool, what: str = ""
) -> str | None:
    name = what or key
    if key not in table:
        if required:
            c.add(path, f"{name} is missing", step)
        return None
    v = table[key]
    if not isinstance(v, str):
        c.add(path + (key,), f"{name} must be a string, not {type(v).__name__}", step)
        return None
    if required and not v.strip():
        c.add(path + (key,), f"{name} is empty", step)
        return None
    if len(v) > max_chars:
        c.add(path + (key,), f"{name} is {len(v)} characters long; at most {max_chars} are allowed", step)
        return None
    return v.strip()


def _layer_value(c: _Checker, v: Any, path: tuple, step: int, name: str) -> int | str | None:
    if v == "last" or (_is_int(v) and v >= 1):
        return v
    c.add(path, f'{name} must be a whole number from 1 (layers count from 1) or "last", not {v!r}', step)
    return None


def _patch_value(c: _Checker, v: Any, path: tuple, step: int, name: str, words: tuple[str, ...]) -> int | str | None:
    if (isinstance(v, str) and v in words) or (_is_int(v) and v >= 0):
        return v
    alts = " or ".join(f'"{w}"' for w in words)
    c.add(path, f"{name} must be a patch number from 0 or {alts}, not {v!r}", step)
    return None


def _check_state(c: _Checker, raw: Any, path: tuple, step: int, images: list[str] | None) -> StepState:
    if not isinstance(raw, dict):
        c.add(path, f"state must be a table (e.g. [steps.state]), not {type(raw).__name__}", step)
        return StepState()
    _check_keys(c, raw, _STATE_KEYS, path, "state", step)
    out: dict[str, Any] = {}

    def at(key: str) -> tuple:
        return path + (key,)

    if "model" in raw:
        msg = _one_of(raw["model"], MODELS, "model", "models")
        if msg:
            c.add(at("model"), msg, step)
        elif raw["model"] != "keep":
            out["model"] = raw["model"]
    if "image" in raw:
        v = raw["image"]
        if not isinstance(v, str):
            c.add(at("image"), f'image must be a sample\'s name or "keep", not {v!r}', step)
        elif v != "keep":
            if images is not None and v not in images:
                listed = ", ".join(images[:16]) + (" ..." if len(images) > 16 else "")
                c.add(at("image"), f"unknown image '{v}' (images: keep, {listed}){_suggest(v, images)}", step)
            else:
                out["image"] = v
    if "layer" in raw:
        out["layer"] = _layer_value(c, raw["layer"], at("layer"), step, "state.layer")
    if "head" in raw:
        v = raw["head"]
        if v == "mean" or (_is_int(v) and v >= 0):
            out["head"] = v
        else:
            c.add(at("head"), f'state.head must be a head number from 0 or "mean", not {v!r}', step)
    if "query_patch" in raw:
        out["query_patch"] = _patch_value(
            c, raw["query_patch"], at("query_patch"), step, "state.query_patch", ("cls", "center")
        )
    if "head_fusion" in raw:
        msg = _one_of(raw["head_fusion"], HEAD_FUSIONS, "head_fusion", "allowed")
        if msg:
            c.add(at("head_fusion"), msg, step)
        else:
            out["head_fusion"] = raw["head_fusion"]
    if "discard_ratio" in raw:
        v = raw["discard_ratio"]
        if _is_number(v) and 0.0 <= v < 1.0:
            out["discard_ratio"] = float(v)
        else:
            c.add(at("discard_ratio"), f"state.discard_ratio must be a number in [0, 1), not {v!r}", step)
    if "start_layer" in raw:
        v = raw["start_layer"]
        if _is_int(v) and v >= 1:
            out["start_layer"] = v
        else:
            c.add(
                at("start_layer"),
                f"state.start_layer must be a whole number from 1 (layers count from 1), not {v!r}",
                step,
            )
    if "class" in raw:
        v = raw["class"]
        if isinstance(v, str) and v.strip():
            out["class_name"] = v.strip()
        else:
            c.add(at("class"), f'state.class must be a class name or "predicted", not {v!r}', step)
    if "tile" in raw:
        out["tile"] = _patch_value(c, raw["tile"], at("tile"), step, "state.tile", ("center", "corner"))
    if "shuffle_seed" in raw:
        v = raw["shuffle_seed"]
        if _is_int(v) and 0 <= v <= 10_000:
            out["shuffle_seed"] = v
        else:
            c.add(at("shuffle_seed"), f"state.shuffle_seed must be a whole number from 0 to 10000, not {v!r}", step)
    if "preset" in raw:
        msg = _one_of(raw["preset"], TRAIN_PRESETS, "preset", "presets")
        if msg:
            c.add(at("preset"), msg, step)
        else:
            out["preset"] = raw["preset"]
    return StepState(**{k: v for k, v in out.items() if v is not None})


def _parse_hide(c: _Checker, v: Any, path: tuple, step: int) -> HideSpec | None:
    if isinstance(v, list):
        if not v:
            c.add(path, "question.hide is an empty list: name at least one patch", step)
            return None
        if not all(_is_int(p) and p >= 0 for p in v):
            c.add(path, f"question.hide must list patch numbers from 0, not {v!r}", step)
            return None
        if len(v) > 10_000:
            c.add(path, "question.hide lists too many patches", step)
            return None
        return HideSpec(patches=tuple(sorted(set(v))))
    m = _HIDE_RE.match(v) if isinstance(v, str) else None
    if m is None:
        c.add(
            path,
            f'question.hide must be a list of patch numbers or "top 10% by rollout" / "top 10% by class map", not {v!r}',
            step,
        )
        return None
    pct = float(m.group(1))
    if not 0 < pct <= 100:
        c.add(path, f"question.hide: the share must be more than 0% and at most 100%, not {pct:g}%", step)
        return None
    return HideSpec(top_percent=pct, by="class map" if m.group(2).lower().startswith("class") else "rollout")


def _check_question(c: _Checker, raw: Any, path: tuple, step: int) -> Question | None:
    if not isinstance(raw, dict):
        c.add(path, f"question must be a table (e.g. [steps.question]), not {type(raw).__name__}", step)
        return None
    kind = raw.get("kind")
    if kind is None:
        c.add(path, f"question.kind is missing (kinds: {', '.join(QUESTION_KINDS)})", step)
        return None
    msg = _one_of(kind, QUESTION_KINDS, "question kind", "kinds")
    if msg:
        c.add(path + ("kind",), msg, step)
        return None
    allowed = _COMMON_QUESTION_FIELDS + _QUESTION_FIELDS[kind]
    for key in raw:
        if key not in allowed:
            extra = f" (fields of {kind}: {', '.join(allowed)})"
            elsewhere = any(key in fields for fields in _QUESTION_FIELDS.values())
            problem = f"'{key}' is not a field of kind '{kind}'" if elsewhere else f"unknown key '{key}'"
            c.add(path + (key,), f"question: {problem}{extra}{_suggest(key, allowed)}", step)
    before = len(c.problems)
    out: dict[str, Any] = {"kind": kind}
    prompt = _text(c, raw, "prompt", path, step, MAX_PROMPT_CHARS, True, "question.prompt")
    out["prompt"] = prompt or ""
    out["explain"] = _text(c, raw, "explain", path, step, MAX_TEXT_CHARS, False, "question.explain") or ""

    def at(key: str) -> tuple:
        return path + (key,)

    if kind == "click_patch":
        if "layer" in raw:
            out["layer"] = _layer_value(c, raw["layer"], at("layer"), step, "question.layer")
        for key, choices, plural in (("head_fusion", HEAD_FUSIONS, "allowed"), ("map", CLICK_MAPS, "maps")):
            if key in raw:
                msg = _one_of(raw[key], choices, f"question.{key}", plural)
                if msg:
                    c.add(at(key), msg, step)
                else:
                    out[key] = raw[key]
    elif kind == "guess_probability":
        if "hide" in raw:
            out["hide"] = _parse_hide(c, raw["hide"], at("hide"), step)
        if "fill" in raw:
            msg = _one_of(raw["fill"], FILLS, "question.fill", "fills")
            if msg:
                c.add(at("fill"), msg, step)
            else:
                out["fill"] = raw["fill"]
        if "target" in raw:
            v = raw["target"]
            if isinstance(v, str) and v.strip():
                out["target"] = v.strip()
            else:
                c.add(at("target"), f'question.target must be a class name or "predicted", not {v!r}', step)
    elif kind == "yes_no_shuffle":
        if "seed" in raw:
            v = raw["seed"]
            if _is_int(v) and 0 <= v <= 10_000:
                out["seed"] = v
            else:
                c.add(at("seed"), f"question.seed must be a whole number from 0 to 10000, not {v!r}", step)
        if "positions" in raw:
            msg = _one_of(raw["positions"], tuple(SHUFFLE_POSITIONS), "question.positions", "allowed")
            if msg:
                c.add(at("positions"), msg, step)
            else:
                out["positions"] = raw["positions"]
    elif kind == "number":
        if "answer" not in raw:
            c.add(
                path, f"question.answer is missing: a number question needs one of: {', '.join(NUMBER_ANSWERS)}", step
            )
        else:
            msg = _one_of(raw["answer"], tuple(NUMBER_ANSWERS), "question.answer", "answers")
            if msg:
                c.add(at("answer"), msg, step)
            else:
                out["answer"] = raw["answer"]
        out["unit"] = _text(c, raw, "unit", path, step, 40, False, "question.unit") or ""
    if len(c.problems) > before:
        return None
    return Question(**{k: v for k, v in out.items() if v is not None})


def _check_step(c: _Checker, raw: Any, index: int, images: list[str] | None) -> Step | None:
    path = ("steps", index)
    step = index + 1
    if not isinstance(raw, dict):
        c.add(path, f"a step must be a table ([[steps]]), not {type(raw).__name__}", step)
        return None
    before = len(c.problems)
    _check_keys(c, raw, _STEP_KEYS, path, "a step", step)
    title = _text(c, raw, "title", path, step, MAX_TITLE_CHARS, True)
    text = _text(c, raw, "text", path, step, MAX_TEXT_CHARS, True)
    page = raw.get("page")
    if page is None:
        c.add(path, f"page is missing (pages: {', '.join(PAGES)})", step)
    else:
        msg = _one_of(page, PAGES, "page", "pages")
        if msg:
            c.add(path + ("page",), msg, step)
            page = None
    focus = raw.get("focus")
    if focus is not None:
        msg = _one_of(focus, FOCUS, "focus", "views")
        if msg:
            c.add(path + ("focus",), msg, step)
            focus = None
        elif page is not None and FOCUS[focus][0] != page:
            c.add(
                path + ("focus",),
                f"focus '{focus}' is on page '{FOCUS[focus][0]}', but this step shows page '{page}'",
                step,
            )
            focus = None
    state = _check_state(c, raw["state"], path + ("state",), step, images) if "state" in raw else StepState()
    question = _check_question(c, raw["question"], path + ("question",), step) if "question" in raw else None
    if len(c.problems) > before:
        return None
    return Step(title, text, page, focus, state, question, c.line_of(path))


def _check_lesson(c: _Checker, data: dict, images: list[str] | None) -> Lesson | None:
    _check_keys(c, data, _LESSON_KEYS, (), "the lesson", None)
    root = ()
    lesson_id = data.get("id")
    if lesson_id is None:
        c.add(root, "id is missing (a short name: lower-case letters, digits, _ and -)")
    elif not isinstance(lesson_id, str) or not _ID_RE.match(lesson_id):
        c.add(
            ("id",), f"id must be a short name of lower-case letters, digits, _ and - (at most 60), not {lesson_id!r}"
        )
    title = _text(c, data, "title", root, None, MAX_TITLE_CHARS, True)
    summary = _text(c, data, "summary", root, None, MAX_TEXT_CHARS, True)
    minutes = data.get("minutes")
    if minutes is None:
        c.add(root, "minutes is missing (how long the lesson takes)")
    elif not (_is_int(minutes) and 1 <= minutes <= 240):
        c.add(("minutes",), f"minutes must be a whole number from 1 to 240, not {minutes!r}")
    order = data.get("order", 100)
    if not _is_int(order):
        c.add(("order",), f"order must be a whole number, not {order!r}")
    needs = data.get("needs", [])
    if not isinstance(needs, list):
        c.add(("needs",), f'needs must be a list, e.g. ["class_names"], not {needs!r}')
        needs = []
    for need in needs:
        msg = _one_of(need, NEEDS, "need", "needs")
        if msg:
            c.add(("needs",), msg)
    steps_raw = data.get("steps")
    steps: list[Step] = []
    if steps_raw is None:
        c.add(root, "the lesson has no steps: add at least one [[steps]] table")
    elif not isinstance(steps_raw, list):
        c.add(("steps",), "steps must be an array of tables: write each step as a [[steps]] table")
    elif not steps_raw:
        c.add(("steps",), "the lesson has no steps: add at least one [[steps]] table")
    elif len(steps_raw) > MAX_STEPS:
        c.add(
            ("steps", MAX_STEPS),
            f"a lesson may have at most {MAX_STEPS} steps; this one has {len(steps_raw)}",
            MAX_STEPS + 1,
        )
    else:
        for i, raw in enumerate(steps_raw):
            s = _check_step(c, raw, i, images)
            if s is not None:
                steps.append(s)
    if c.problems:
        return None
    return Lesson(
        id=lesson_id,
        title=title,
        minutes=minutes,
        summary=summary,
        steps=tuple(steps),
        needs=tuple(needs),
        order=order,
        source=c.source,
    )


_SYNTAX_LINE_RE = re.compile(r"\(at line (\d+), column (\d+)\)")


def _decode(source: str | bytes | Path, name: str | None) -> tuple[str | None, str, list[LessonProblem]]:
    """(text, name, problems): the file read, size-checked and decoded."""
    if isinstance(source, Path):
        name = name or source.name
        try:
            size = source.stat().st_size
            if size > MAX_BYTES:
                return None, name, [_too_large(name, size)]
            source = source.read_bytes()
        except OSError as e:
            return None, name, [LessonProblem(name, None, f"cannot read the file: {e.strerror or e}")]
    name = name or "lesson.toml"
    if isinstance(source, str):
        data = source.encode("utf-8", errors="surrogatepass")
    else:
        data = bytes(source)
    if len(data) > MAX_BYTES:
        return None, name, [_too_large(name, len(data))]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, name, [LessonProblem(name, line, "the file is not UTF-8 text")]
    return text.removeprefix("\ufeff"), name, []


def _too_large(name: str, size: int) -> LessonProblem:
    return LessonProblem(name, None, f"the file is {size:,} bytes; a lesson file may be at most {MAX_BYTES:,} bytes")


def _parse(
    source: str | bytes | Path, name: str | None, images: list[str] | None
) -> tuple[Lesson | None, list[LessonProblem]]:
    if isinstance(source, str) and "\n" not in source and source.strip().endswith(".toml"):
        source = Path(source.strip())  # a path given as a string
    text, name, problems = _decode(source, name)
    if text is None:
        return None, problems
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise LessonError(
            [LessonProblem(name, None, "reading lessons needs Python 3.11 or the 'tomli' package (pip install tomli)")]
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _SYNTAX_LINE_RE.search(msg)
        line = int(m.group(1)) if m else None
        return None, [LessonProblem(name, line, f"invalid TOML: {msg}")]
    c = _Checker(name, key_lines(text))
    if images is None:
        images = sample_image_names()
    lesson = _check_lesson(c, data, images)
    return lesson, c.problems


def validate(
    source: str | bytes | Path, name: str | None = None, images: list[str] | None = None
) -> list[LessonProblem]:
    """Every problem of a lesson file; an empty list when it is good.

    Args:
        source: a `Path`, the file's bytes (an upload), or its text (a string ending in ".toml"
            without a newline is taken as a path).
        name: how messages name the file (default: the path's name, else "lesson.toml").
        images: the image names a step may select (default: the bundled samples, as the
            sidebar names them; pass the sidebar's own list when it has more).
    """
    return _parse(source, name, images)[1]


def load_lesson(source: str | bytes | Path, name: str | None = None, images: list[str] | None = None) -> Lesson:
    """A lesson from a file, its bytes or its text (arguments as `validate`).

    Raises:
        LessonError: the file is too large, not UTF-8, not TOML, or breaks the format; its
            `problems` name the line and the problem of each.
    """
    lesson, problems = _parse(source, name, images)
    if problems or lesson is None:
        raise LessonError(problems)
    return lesson


def bundled_lessons(directory: Path = LESSONS_DIR) -> list[Lesson]:
    """The lessons shipped in `lessons/`, in their `order` (then by title).

    Raises:
        LessonError: a bundled file is broken (the tests keep them valid).
    """
    lessons = [load_lesson(p) for p in sorted(directory.glob("*.toml"))]
    return sorted(lessons, key=lambda lesson: (lesson.order, lesson.title))
