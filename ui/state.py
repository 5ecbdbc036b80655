"""Page settings that outlive the page, and the address that shares them.

Streamlit forgets a widget's value in any run that does not draw the widget, so leaving a
page used to reset its layer, head and query. `kept(key, default, allowed)` is called just
before a widget is drawn with `key=key` (and no default value of its own): it seeds the
widget with the value it had when this session last drew it, kept in a plain session_state
entry that Streamlit does not clean up, and falls back to `default` when that value no
longer fits (`allowed`: layer 11 after switching to a 6-layer model).

With `url="layer"` the value is also written to the page's address (`?layer=3`), and a link
opened in a new session starts from it: `read_link()` (called by the sidebar on a session's
first run) keeps the address's parameters until the settings they name are drawn. A link
that names something this app cannot show says so on the page and the default is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st

_KEPT = "_kept_settings"  # widget key -> its value when last drawn
_LINK = "_link_params"  # the address's parameters at the session's first run, not yet applied
_LINK_READ = "_link_read"  # True once read_link() has run in this session
_WRITTEN = "_url_written"  # the address parameters written in this run


def read_link() -> dict[str, str]:
    """The parameters of the address this session was opened with (read once, at its first run).

    Entries are removed as the settings they name are applied (`take_link_param`, `kept`).
    """
    if not st.session_state.get(_LINK_READ):
        st.session_state[_LINK_READ] = True
        st.session_state[_LINK] = {k: st.query_params.get(k, "") for k in st.query_params}
    return st.session_state.setdefault(_LINK, {})


def take_link_param(name: str) -> str | None:
    """A parameter of the opening address that nothing has applied yet (and mark it applied)."""
    return read_link().pop(name, None)


def end_url_run() -> None:
    """At the end of a run: drop the address parameters this run did not write (another page's
    layer after a page switch) and the opening address's parameters no setting used."""
    written = st.session_state.pop(_WRITTEN, set())
    for name in list(st.query_params):
        if name not in written:
            del st.query_params[name]
    st.session_state[_LINK] = {}


def set_url(name: str, value: str | None) -> None:
    """Write one parameter of the address (None removes it); unchanged values send nothing."""
    st.session_state.setdefault(_WRITTEN, set()).add(name)
    if value is None:
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != value:
        st.query_params[name] = value


def _from_url(raw: str, allowed: Iterable[Any] | None, default: Any) -> tuple[Any, bool]:
    """The allowed value whose text is `raw`, and whether one was found."""
    candidates = [default] if allowed is None else list(allowed)
    for v in candidates:
        if str(v) == raw:
            return v, True
    if allowed is None and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return type(default)(raw), True
        except ValueError:
            pass
    return default, False


def kept(
    key: str,
    default: Any,
    allowed: Iterable[Any] | None = None,
    url: str | None = None,
    describe: Callable[[Any], str] = str,
) -> Any:
    """Seed the widget `key` with its value from this session (or the link), before it is drawn.

    Args:
        key: the widget's key. Draw the widget without a default value of its own.
        default: the value when there is none yet, or the kept one does not fit.
        allowed: the values that fit now (a range, a list); None accepts any.
        url: the address parameter that carries the value, if it should be shareable.
        describe: how a message names a value ("layer 6").

    Returns:
        The value the widget will show.
    """
    allowed = None if allowed is None else list(allowed)
    store: dict = st.session_state.setdefault(_KEPT, {})
    raw = take_link_param(url) if url else None
    if raw is not None:
        value, found = _from_url(raw, allowed, default)
        if not found:
            st.warning(
                f"The link asks for {url} {raw}, which this model does not have; showing {describe(default)} instead."
            )
    elif key in st.session_state:  # drawn in the last run: the user's latest value
        value = st.session_state[key]
    else:
        value = store.get(key, default)
    if allowed is not None and value not in allowed:
        value = default
    st.session_state[key] = value
    store[key] = value
    if url:
        set_url(url, str(value))
    return value


def last(key: str, default: Any) -> Any:
    """A kept setting's latest value, read from another page (e.g. the Attention page's rollout settings)."""
    if key in st.session_state:
        return st.session_state[key]
    return st.session_state.get(_KEPT, {}).get(key, default)


def forget(*keys: str) -> None:
    """Drop kept settings (they start from their defaults when next drawn)."""
    store: dict = st.session_state.setdefault(_KEPT, {})
    for k in keys:
        store.pop(k, None)
        st.session_state.pop(k, None)
