"""Preview drawing: the label names the shown class with that class's probability, and stays on
the photo wherever the face is; the CLI help lists what a user may choose."""

from __future__ import annotations

import numpy as np
import pytest

from maskbatch.cli import build_parser
from maskbatch.config import MASK, NO_MASK
from maskbatch.models.detect import MODES
from maskbatch.outputs.draw import COLOURS, annotate, label_box, label_text


def test_label_shows_the_probability_of_the_shown_class():
    assert label_text(MASK, 0.93) == "mask 0.93"
    assert label_text(NO_MASK, 0.02) == "no mask 0.98"  # was "no mask 0.02", i.e. P(mask)


@pytest.mark.parametrize("left,top", [(0, 0), (5, 2), (290, 0), (295, 190), (-10, -10),
                                      (150, 100)])
def test_label_box_stays_inside_the_image(left, top):
    x0, y0, x1, y1 = label_box(left, top, 60, 12, 300, 200)
    assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
    assert (x1 - x0, y1 - y0) == (64, 18)  # never clipped


@pytest.mark.parametrize("box", [(0, 0, 40, 40), (260, 0, 300, 30), (0, 170, 30, 200),
                                 (280, 185, 300, 200)])
def test_drawn_label_is_whole_at_every_edge(box):
    """The label's background and its white text are drawn completely inside the photo."""
    image = np.zeros((200, 300, 3), np.uint8)
    out = annotate(image, [(*box, NO_MASK, 0.1)])
    colour = np.array(COLOURS[NO_MASK])
    filled = (out == colour).all(axis=2) | (out > 128).all(axis=2)
    rows, cols = np.nonzero(filled)
    label = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert (label > 200).all(axis=2).sum() > 20, "the label's text is missing or clipped"
    # the label's background has its full height: at least 10 rows of the fill colour
    assert (out == colour).all(axis=2).any(axis=1).sum() >= 10


def test_help_lists_modes_and_explains_iou(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(mode in text for mode in MODES)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--iou T IoU a predicted box needs with a truth box" in text
