"""The cards of the bundled models ("domain | input | training | measured figure") as `metashot models`
prints them: a table within 100 columns, or every field with ``--long``."""

from __future__ import annotations

import textwrap

MODELS_WIDTH = 100  # `metashot models` fits a terminal this wide
CARD_FIELDS = ("domain", "input", "training", "measured")


def _card_fields(card: str) -> dict[str, str]:
    """A card "domain | input | training | measured figure" as named fields (a short card fills the first)."""
    parts = [p.strip() for p in card.split(" | ")]
    if len(parts) > 4:
        parts = parts[:3] + [" | ".join(parts[3:])]
    return dict(zip(CARD_FIELDS, parts, strict=False))


def models_table(rows: list[dict[str, str]], long: bool = False, width: int = MODELS_WIDTH) -> list[str]:
    """The lines of `metashot models`: a name | domain | measured table within ``width`` columns, or with
    ``long`` every field of each card, wrapped to ``width``."""
    if long:
        out: list[str] = []
        for r in rows:
            out.append(r["name"])
            for key, text in [*_card_fields(r["card"]).items(), ("path", r["path"])]:
                out += textwrap.wrap(text, width, initial_indent=f"  {key + ':':10s}",
                                     subsequent_indent=" " * 12, break_on_hyphens=key != "path")
        return out
    name_w = max([len(r["name"]) for r in rows] + [4])
    fields = [_card_fields(r["card"]) for r in rows]
    dom_w = min(max([len(f.get("domain", "")) for f in fields] + [6]), 24)
    fig_w = width - name_w - dom_w - 4
    out = [f"{'name':{name_w}s}  {'domain':{dom_w}s}  measured figure (--long: input, training, folder)"]
    for r, f in zip(rows, fields, strict=True):
        dom = textwrap.wrap(f.get("domain", ""), dom_w) or [""]
        fig = textwrap.wrap(f.get("measured", ""), fig_w) or [""]
        for i in range(max(len(dom), len(fig))):
            out.append(f"{r['name'] if i == 0 else '':{name_w}s}  {dom[i] if i < len(dom) else '':{dom_w}s}  "
                       f"{fig[i] if i < len(fig) else ''}".rstrip())
    return out
