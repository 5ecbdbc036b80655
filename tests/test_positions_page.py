"""The Position embeddings page states what it measures, not what a trained model would show."""

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from vit_core.analysis.embeddings import position_similarity
from vit_core.analysis.emergence import position_structure_score

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
BUNDLED = ROOT / "assets" / "vit_cifar10.safetensors"


def _positions_page(model_key: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["model_choice"] = model_key
    at.run()
    at.run()
    at.switch_page("pages/4_positions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    return " ".join(e.value for e in (*at.caption, *at.markdown, *at.info))


def test_untrained_model_is_described_by_its_measured_structure():
    from ui.models import untrained_cifar_model

    at = _positions_page("untrained")
    text = _texts(at)
    assert "diagonal" not in text and "shows it did" not in text
    m = untrained_cifar_model()
    grid = m.cfg.grid_size
    n = grid[0] * grid[1]
    score = position_structure_score(
        torch.as_tensor(position_similarity(m).numpy(), dtype=torch.float64).reshape(n, n), grid
    )
    assert abs(score) < 0.2
    assert f"{score:+.2f} more similar" in text and "no clear grid structure" in text


@pytest.mark.skipif(not BUNDLED.exists(), reason="no bundled model")
def test_bundled_model_reports_its_formed_grid():
    at = _positions_page("bundled")
    text = _texts(at)
    assert "+0.75 more similar" in text and "the grid structure has formed" in text
    assert np.isfinite(0.75)


class _RunningRun:
    """Stands in for this session's training run: the badge reads only `view()`."""

    def view(self):
        from types import SimpleNamespace

        from vit_core.runs import TRAINING

        return SimpleNamespace(status=TRAINING, progress=0.5, step=50, total_steps=100, active=True, queue_position=0)


def test_every_page_shows_the_training_badge_while_a_run_of_this_session_trains():
    from ui.training.lease import RUN_KEY

    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["model_choice"] = "untrained"
    at.session_state[RUN_KEY] = _RunningRun()
    at.run()
    at.run()
    at.switch_page("pages/5_attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = " ".join(str(getattr(e, "proto", "")) for e in at.sidebar)
    assert "Training: 50% (step 50 of 100)" in shown
