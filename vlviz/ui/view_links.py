"""Links that restore a view: the model, the pairs, the tab, and on Grounding the pair and the word.

A link is a query string: `?model=SPEC&sample=scenes&tab=grounding&pair=3&word=2`. Pairs that are a
bundled sample set are named (the link works for anyone, for ever); other pairs (uploads) are kept
under a random token, `pairs=TOKEN` (`vlviz.ui.session.KEPT`), for as long as sessions live, so the
link shares them with whoever holds it and with no one else. Gradio's own `gr.DeepLinkButton` snapshots
every component's value (heatmaps included) into a new file per click that nothing bounds; these links
write nothing. Every parameter is untrusted: the model goes through the server's policy, the tab must be
one of the app's, numbers are bounded, and unknown parameters and values are ignored with a notice that
names the parameters (never their values). Linked pairs bring their model by its public name, never a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import gradio as gr

from vlviz.data.samples import SAMPLE_SETS, sample_files
from vlviz.models.encoding import EncodedPairs
from vlviz.ui.affinity_tab import AffinityTab
from vlviz.ui.consistency_tab import TAB as CONSISTENCY_TAB
from vlviz.ui.embedding_tab import TAB as EMBEDDING_TAB
from vlviz.ui.grounding_tab import TAB as GROUNDING_TAB
from vlviz.ui.keywords_tab import TAB as KEYWORDS_TAB
from vlviz.ui.messages import warn
from vlviz.ui.session import KEPT, Analysis, Session, Updates, WantedView, client_address
from vlviz.viz.html import markdown_text

TABS = {  # a link's tab= value (the tab's id) -> the tab's label
    "affinity": "Affinity",
    "consistency": CONSISTENCY_TAB,
    "embedding": EMBEDDING_TAB,
    "grounding": GROUNDING_TAB,
    "keywords": KEYWORDS_TAB,
    "train": "Train",
}
MAX_SPEC_CHARS = 300  # a model spec in a link
LINK_PARAMS = ("model", "sample", "pairs", "tab", "pair", "word")
GRADIO_PARAMS = frozenset({"view", "deep_link", "ui", "write_token"})  # read by Gradio's page, as `__theme` is
PAIR_RANGE, WORD_RANGE = (1, 1_000_000), (0, 10_000)


def _sample_of(analysis: Analysis) -> str | None:
    """The bundled sample set the analysed pairs are, unchanged, or None."""
    for name in SAMPLE_SETS:
        files, captions = sample_files(name)
        names = [path.rsplit("/", 1)[-1] for path in files]
        if analysis.pairs.names == names and analysis.pairs.captions == captions.splitlines():
            return name
    return None


def view_link(shown_tab: str, pair: int | None, word: int | None, session: Session) -> str:
    """A Markdown link to what this page shows now: the model and pairs analysed, the tab, Grounding's pair and word.

    A model this session trained ('session run N') is named in the link but loads only in this session.
    """
    analysis = session.analyzed("a link restores the pairs analysed and the view on them.")
    params = {"model": analysis.model_name}
    sample = _sample_of(analysis)
    if sample:
        params["sample"] = sample
    else:
        params["pairs"] = KEPT.put(analysis.encoded, analysis.model_name, session.token)  # a name, never a path
    tab = next((key for key, label in TABS.items() if label == shown_tab), "affinity")
    params["tab"] = tab
    if tab == "grounding":
        params |= {k: str(int(v)) for k, v in (("pair", pair), ("word", word)) if v is not None}
    lasting = (
        "it works as long as the bundled samples do"
        if sample
        else "your uploads travel with it; it expires with sessions"
    )
    return f"[Link to this view](?{urlencode(params)}) (copy it; {lasting})"


def _bounded_int(value: str | None, low: int, high: int) -> int | None:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and low <= number <= high else None


def _ignored(params: Any) -> str | None:
    """The notice naming the link's parameters this page ignores: unknown ones, and known ones whose value is
    not one of theirs (Gradio's own, such as `view` and `__theme`, are not the link's); None when there are none."""
    unknown = [
        key for key in params if key not in LINK_PARAMS and key not in GRADIO_PARAMS and not key.startswith("__")
    ]
    bad = [
        key
        for key, valid in (
            ("sample", params.get("sample") in SAMPLE_SETS),
            ("tab", params.get("tab") in TABS),
            ("pair", _bounded_int(params.get("pair"), *PAIR_RANGE) is not None),
            ("word", _bounded_int(params.get("word"), *WORD_RANGE) is not None),
        )
        if key in params and not valid
    ]
    ignored = [f"'{key[:40]}'" for key in [*bad, *unknown]]
    if not ignored:
        return None
    names = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
    return (
        f"Ignored in this link: {names} (a link has model, sample ({', '.join(SAMPLE_SETS)}), pairs, "
        f"tab ({', '.join(TABS)}), pair (from 1) and word (from 0))."
    )


@dataclass(frozen=True)
class LinkedView:
    """What a link asks the page to show: the model box's spec, a sample set, the tab, Grounding's first pair and
    word, and the pairs it hands over (None each when the link does not ask, or may not have it)."""

    model: str | None
    sample: str | None
    tab: str  # a key of TABS
    wanted: WantedView
    linked: EncodedPairs | None


def restore_view(session: Session, request: gr.Request) -> LinkedView | None:
    """On page load: what a link asks for (None when it has no link parameters: the page opens as it always
    does). Each notice (ignored parameters, a refused model, expired pairs) is a toast."""
    params = request.query_params if request else {}
    ignored = _ignored(params)
    notices = [ignored] if ignored else []
    if not any(key in params for key in ("model", "sample", "pairs", "tab")):
        _warn(notices)
        return None
    linked = KEPT.get(params.get("pairs"))
    if params.get("pairs") and linked is None:
        notices.append("The link's uploaded pairs have expired (links to uploads last as long as sessions do).")
    model = None
    # linked pairs name their model as the views do (a session's run is 'session run N', never its folder)
    spec = (linked[0].model_name if linked else params.get("model", "")).strip()[:MAX_SPEC_CHARS]
    if spec:
        try:
            if session.checkpoint(spec) is None:
                session.policy.check(spec)
            model = spec
        except ValueError as error:
            notices.append(f"The link's model is not available here: {error}")
    sample = params["sample"] if linked is None and params.get("sample") in SAMPLE_SETS else None
    tab = params.get("tab") if params.get("tab") in TABS else "affinity"
    wanted = WantedView(
        pair=_bounded_int(params.get("pair"), *PAIR_RANGE), word=_bounded_int(params.get("word"), *WORD_RANGE)
    )
    _warn(notices)
    return LinkedView(model, sample, tab, wanted, linked[0] if linked else None)


def _warn(notices: list[str]) -> None:
    """Each notice as a toast, escaped: Gradio shows a toast's message as HTML."""
    for notice in notices:
        warn(notice)


@dataclass(frozen=True)
class LinkTargets:
    """What a link restores: the model box, the sample set, the uploads and captions, the tabs, the tab in view,
    Grounding's wanted pair and word, and the pairs it hands over (a state)."""

    model: gr.Dropdown
    sample: gr.Radio
    files: gr.File
    captions: gr.Textbox
    tabs: gr.Tabs
    shown_tab: gr.State
    wanted: gr.State
    linked: gr.State

    def restore(self, session: Session, request: gr.Request) -> Updates:
        """`restore_view` as updates of the page."""
        link = restore_view(session, request)
        if link is None:
            return gr.skip()
        updates: Updates = {
            self.tabs: gr.Tabs(selected=link.tab), self.shown_tab: TABS[link.tab], self.wanted: link.wanted,
            self.linked: link.linked,
        }  # fmt: skip
        if link.model:
            updates[self.model] = gr.update(value=link.model)
        if link.sample:
            files, captions = sample_files(link.sample)
            updates |= {self.sample: gr.update(value=link.sample), self.files: files, self.captions: captions}
        return updates


def open_view(affinity: AffinityTab) -> Callable[..., Updates]:
    """The page's first view after `LinkTargets.restore`: the Affinity view of the linked pairs (no encoding),
    else an Analyze of the page's files (the sample set analysed on load, or the one the link names)."""

    def opened(
        files: list[str] | None, captions: str | None, model_spec: str | None, value_kind: str, session: Session,
        linked: EncodedPairs | None, request: gr.Request, progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Updates:  # fmt: skip
        if linked is not None:
            session.hold(linked, None, client_address(request))  # its model loads by name when a tab needs it
            status = f"**Model:** {markdown_text(linked.model_name)} (the pairs and encoding a link handed over)"
            return affinity.shown(linked, status, value_kind)
        if not files:
            return gr.skip()
        return affinity.analyze(files, captions, model_spec, value_kind, session, request, progress)

    return opened
