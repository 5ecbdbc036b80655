"""A small load test for CI: 4 concurrent browser sessions on one server, each with its own image.

The full version (20 sessions, several waves, latency and memory figures) is
benchmarks/load_test.py; this runs its driver with 4 sessions and one wave, and checks that
every session got the prediction vit_core computes for its own image, on the Attention page,
with no exception on the page. A static check makes sure every Streamlit cache in the app is
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
                elif isinstance(k.value, ast.Name):
                    keys |= dicts.get(k.value.id, set())
            if "max_entries" not in keys:
                unbounded.append(f"{path.relative_to(ROOT)}:{line} st.{kind} without max_entries")
    assert found >= 10  # the scan does see the app's caches
    assert not unbounded, unbounded


@pytest.mark.browser
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
