"""Small load tests for CI: 4 concurrent browser sessions on one server.

The full versions are benchmarks/load_test.py: a class of 30 (a few attacking) and waves of 20
sessions. Here its drivers run at 4 sessions: a wave, where every session must get the
prediction vit_core computes for its own image, on the Attention page, with no exception on the
page; and a small class in classroom mode, where two sessions attack (a 40-megapixel image, the
checkpoint upload and path box) and must be refused while the other two get their own correct
prediction, and nothing the class did is left in the server's temporary folder. A static check makes sure every Streamlit cache in the app is
bounded (`max_entries`), which is what keeps memory flat across many images and sessions.

The browser part is skipped without /usr/bin/chromium or the playwright package.
"""

from __future__ import annotations

import ast
import asyncio
import math

import pytest

from tests._browser_kit import ROOT, import_playwright, skip_without_browser, streamlit_server

SESSIONS = 4


def _cache_uses(tree: ast.Module):
    """Every st.cache_data / st.cache_resource in a module: (kind, the call configuring it or None if bare, line)."""
    called = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("cache_data", "cache_resource"):
            yield node.attr, called.get(id(node)), node.lineno


def _dict_keys(node: ast.expr, dicts: dict[str, set]) -> set:
    """The keys of a `**` argument: a module-level dict by name, or a dict literal (with `**` spreads)."""
    if isinstance(node, ast.Name):
        return dicts.get(node.id, set())
    keys: set = set()
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            keys |= _dict_keys(v, dicts) if k is None else ({k.value} if isinstance(k, ast.Constant) else set())
    return keys


def test_every_streamlit_cache_is_bounded():
    files = [ROOT / "app.py", *sorted((ROOT / "ui").glob("*.py")), *sorted((ROOT / "pages").glob("*.py"))]
    found, unbounded = 0, []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        # module-level dicts passed as **kwargs to a cache decorator (RESULTS = {"max_entries": ...})
        dicts = {
            t.id: {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        for kind, call, line in _cache_uses(tree):
            found += 1
            keys = set()
            for k in call.keywords if call is not None else ():
                if k.arg:
                    keys.add(k.arg)
                else:
                    keys |= _dict_keys(k.value, dicts)
            if "max_entries" not in keys:
                unbounded.append(f"{path.relative_to(ROOT)}:{line} st.{kind} without max_entries")
    assert found >= 10  # the scan does see the app's caches
    assert not unbounded, unbounded


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_four_concurrent_sessions_each_get_their_own_correct_result():
    import_playwright("playwright.async_api")
    from benchmarks.load_test import check, images_for_wave, run_wave, summary

    images = images_for_wave(0, SESSIONS)
    with streamlit_server("streamlit_load.log") as server:
        rss_before = server.rss_mib()
        results = asyncio.run(run_wave(server.url, images, direct=True))  # opens /attention first
        rss_after = server.rss_mib()
    check(results, dict(images))
    for r in results:
        assert not r.errors, (r.image, r.errors)
        assert r.image_on_page == f"upload: {r.image}"  # each session kept its own image
        assert r.shown == r.expected, (r.image, r.shown, r.expected)
    assert all(r.correct for r in results) and len({r.image for r in results}) == SESSIONS
    s = summary(results)
    assert all(math.isfinite(v["p95"]) for v in s.values()), s
    assert 0 < rss_before < rss_after < 4096, (rss_before, rss_after)  # MiB: a sanity bound, not a benchmark


@pytest.mark.browser
@pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_a_small_class_in_classroom_mode_attackers_are_refused_and_nothing_is_left_behind():
    import_playwright("playwright.async_api")
    from benchmarks.load_test import TOUR, class_ok, classroom, print_class

    # one tour page and no separate warm-up: the class itself warms the server (time limit: a loaded CI machine)
    report = classroom(
        SESSIONS, attackers=2, tour=[t for t in TOUR if t[0] == "Attention"], time_limit_s=400, warmup=False
    )
    print_class(report)
    assert not report["warmup_errors"], report["warmup_errors"]
    assert sorted(a["attack"] for a in report["attacks"]) == ["40mp", "checkpoint_widgets"]
    for a in report["attacks"]:
        assert a["refused"] and not a["errors"], a
    assert any("the limit is 16 MP" in a["message"] for a in report["attacks"])
    h = report["honest"]
    assert h["count"] == 2 and h["correct"] == 2, [r for r in report["results"] if r["role"] == "tour"]
    assert math.isfinite(h["page_p95_s"])
    assert report["left_behind"] == [] and report["disk_after_bytes"] == report["disk_before_bytes"]
    # MiB, the server's peak: ~500 with torch and the app loaded (the 30-session class peaked at 561);
    # the 40 MP image once cost +538 MiB on its own
    assert report["rss_peak_mib"] < 900
    assert class_ok(report)
