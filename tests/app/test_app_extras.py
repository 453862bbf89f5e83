"""The page's text-intent parsing and drawing tab without a browser (metashot.app.extras): a sketch pad's
value in, the Omniglot model's answer out; every mistake is one line."""

from __future__ import annotations

import numpy as np
import pytest

from metashot.app.extras import DrawingSession, drawing, parse_examples
from metashot.app.photos import AppError, ModelCache


def pad(kind: str, shift: int = 0) -> dict:
    """A 280x280 RGBA sketch pad value (transparent, black ink) with a vertical bar, a horizontal bar or a
    ring, moved by ``shift`` pixels."""
    img = np.zeros((280, 280, 4), np.uint8)
    c = 140 + shift
    if kind == "bar":
        img[40:240, c - 10 : c + 10] = (0, 0, 0, 255)
    elif kind == "dash":
        img[c - 10 : c + 10, 40:240] = (0, 0, 0, 255)
    else:
        yy, xx = np.mgrid[:280, :280]
        r = np.hypot(yy - c, xx - c)
        img[(r > 70) & (r < 90)] = (0, 0, 0, 255)
    return {"background": None, "layers": [img], "composite": img}


def test_parse_examples():
    s, y = parse_examples("greet: hello there\n\nbye\tsee you\ngreet\thi")
    assert (s, y) == (["hello there", "see you", "hi"], ["greet", "bye", "greet"])
    for text, says in [("greet: hi\ngreet: hello", "at least 2 intents"), ("greet hi\nbye: x", "line 1"),
                       ("", "at least 2 intents")]:
        with pytest.raises(AppError, match=says) as e:
            parse_examples(text)
        assert "\n" not in str(e.value)


def test_blank_pad_is_one_line():
    with pytest.raises(AppError, match="blank"):
        drawing({"composite": np.zeros((280, 280, 4), np.uint8)})
    with pytest.raises(AppError, match="draw something"):
        drawing({"composite": None})


def test_drawings_are_classified_on_the_omniglot_model():
    cache = ModelCache()
    d = DrawingSession()
    with pytest.raises(AppError, match="at least 2 classes"):
        d.classify(cache, "protonet-omniglot", pad("bar"))
    for kind in ("bar", "dash", "ring"):
        for shift in (-20, 20):
            assert kind in d.add(kind, pad(kind, shift))
    with pytest.raises(AppError, match="give the drawing's class a name"):
        d.add(" ", pad("bar"))
    for kind in ("bar", "dash", "ring"):
        probs = d.classify(cache, "protonet-omniglot", pad(kind))
        assert max(probs, key=probs.get) == kind and abs(sum(probs.values()) - 1) < 1e-5
