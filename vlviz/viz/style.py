"""One print-friendly figure style for every vlviz figure: the plotly template "vlviz" and its colour scales.

Figures are read on screens, in greyscale print and by colour-blind readers, so: a white background,
one sans-serif family at sizes that stay legible when a figure is shrunk to a paper column,
sequential scales that are perceptually uniform and monotonic in lightness (Viridis, Inferno: they
keep their order in greyscale), a diverging scale from ColorBrewer's colour-blind-safe set (RdBu)
for signed differences, and Okabe & Ito's colour-blind-safe palette for categories. Every figure
function sets `template=TEMPLATE`; the template travels inside each figure's JSON, so a figure
redrawn elsewhere (`vlviz.viz.figure_data`) keeps the style without vlviz.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

TEMPLATE = "vlviz"
FONT_FAMILY = "Arial, Helvetica, 'Liberation Sans', 'DejaVu Sans', sans-serif"
TEXT_COLOUR = "#222222"

SEQUENTIAL = "Viridis"  # cosines and probabilities
SEQUENTIAL_HOT = "Inferno"  # non-negative magnitudes: inconsistency, grounding weights
DIVERGING = "RdBu_r"  # signed differences centred on 0: red above, blue below

# Okabe & Ito (2008), "Color Universal Design": told apart under every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
IMAGE_COLOUR, CAPTION_COLOUR = OKABE_ITO[0], OKABE_ITO[1]  # the two modalities (also told apart by marker shape)
HIGHLIGHT = "#000000"  # rings around picked points: visible on every colour of the scales above and in greyscale


def _axis() -> dict:
    """Axes drawn as in a printed plot: a dark line with outside ticks, a faint grid, no zero line."""
    return {
        "showline": True,
        "linecolor": "#444444",
        "ticks": "outside",
        "tickcolor": "#444444",
        "showgrid": True,
        "gridcolor": "#E5E5E5",
        "zeroline": False,
        "automargin": True,
        "title": {"standoff": 8},
    }


def vlviz_template() -> go.layout.Template:
    """The template: fonts, backgrounds, axes, colour sequence and default colour scales."""
    return go.layout.Template(
        layout={
            "font": {"family": FONT_FAMILY, "size": 13, "color": TEXT_COLOUR},
            "title": {"font": {"size": 16}, "x": 0.5},
            "paper_bgcolor": "white",
            "plot_bgcolor": "white",
            "colorway": list(OKABE_ITO),
            "colorscale": {"sequential": SEQUENTIAL, "sequentialminus": SEQUENTIAL, "diverging": DIVERGING},
            "xaxis": _axis(),
            "yaxis": _axis(),
            "legend": {"font": {"size": 12}},
            "hoverlabel": {"font": {"family": FONT_FAMILY}},
        }
    )


pio.templates[TEMPLATE] = vlviz_template()  # registered once, on the first import of vlviz.viz.figures
