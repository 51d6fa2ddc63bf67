"""Drawings of a genotype for people: an RGB array or a PNG file. No jax.

Macro spaces (ronasmis, c2fnas) are drawn as their path through the resolution levels:
one labelled box per stage or cell, level 0 (full resolution) at the top, encoder-decoder
skip connections dashed. SCNAS genotypes as their 4 cells:

Each cell type (space.CELL_TYPES order) gets one panel, side by side: inputs s0 and s1
on the left, nodes 0..3 in the middle, the output (channel concat of the nodes) on the
right. Every non-zero edge is an arrow from its source state to its node, labelled with
a short op name; "zero" edges are not drawn (no connection). A node with no incoming
edge is drawn dashed: it is all zeros. Genotype format: jaxnas/genotype.py.
"""

import io

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import matplotlib.image
import numpy as np

from jaxnas.io import fileio
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces import registry
from jaxnas.spaces.scnas import space

SHORT_NAMES = {
    "conv_3x3x3": "conv",
    "sep_conv_3x3x3_d2": "sep d2",
    "sep_conv_3x3x3_d3": "sep d3",
    "sep_conv_3x3x3_d4": "sep d4",
    "max_pool_3x3x3": "max",
    "avg_pool_3x3x3": "avg",
    "identity": "id",
    "zero": "zero",
}
_COLOURS = matplotlib.colormaps["tab10"]
# State positions (x, y): 0 = s0, 1 = s1, 2 + j = node j; nodes zig-zag so that arrows
# between neighbouring nodes do not run through the others.
_POSITIONS = [(0.0, 3.0), (0.0, 0.0), (2.0, 2.6), (3.6, 0.4), (5.2, 2.6), (6.8, 0.4)]
_MIDDLE = 1.5
_OUTPUT = (8.6, _MIDDLE)
_BOX = dict(boxstyle="round,pad=0.3", facecolor="white")


def _arrow(ax, start, end, rad: float, colour, label: str | None = None) -> None:
    """Curved arrow start -> end; the label sits on the curve's midpoint."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(
        arrowstyle="-|>", color=colour, lw=1.2, shrinkA=13, shrinkB=13,
        connectionstyle=f"arc3,rad={rad}"))
    if label is not None:
        # arc3 is a quadratic Bezier with control point mid + rad * (dy, -dx).
        dx, dy = end[0] - start[0], end[1] - start[1]
        x = (start[0] + end[0]) / 2 + 0.5 * rad * dy
        y = (start[1] + end[1]) / 2 - 0.5 * rad * dx
        ax.text(x, y, label, fontsize=7, color=colour, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"))


def _draw_cell(ax, cell_type: str, edges: list) -> None:
    """One panel: the 6 states, the output and the non-zero edges of one cell type."""
    fed = set()
    for edge in edges:
        if edge["op"] == "zero":
            continue
        op = space.OP_NAMES.index(edge["op"])
        fed.add(edge["dst"])
        start, end = _POSITIONS[edge["src"]], _POSITIONS[2 + edge["dst"]]
        # Bend away from the middle line, more for longer hops: fewer arrows cross nodes.
        hops = 2 + edge["dst"] - edge["src"]
        rad = min(0.1 + 0.07 * hops, 0.45) * (-1 if start[1] + end[1] >= _MIDDLE * 2 else 1)
        _arrow(ax, start, end, rad, _COLOURS(op), SHORT_NAMES[edge["op"]])
    for j in range(space.NUM_NODES):
        _arrow(ax, _POSITIONS[2 + j], _OUTPUT, 0.0, "0.8")
    names = ["s0", "s1", *(str(j) for j in range(space.NUM_NODES))]
    for s, (name, (x, y)) in enumerate(zip(names, _POSITIONS)):
        dead = s >= 2 and s - 2 not in fed
        ax.text(x, y, name, ha="center", va="center", fontsize=9,
                bbox={**_BOX, "linestyle": "--" if dead else "-",
                      "facecolor": "0.9" if s < 2 else "white"})
    ax.text(*_OUTPUT, "out", ha="center", va="center", fontsize=9,
            bbox={**_BOX, "facecolor": "0.9"})
    ax.set_title(cell_type, fontsize=10)
    ax.set_xlim(-0.7, 9.3)
    ax.set_ylim(-1.6, 4.6)
    ax.set_axis_off()


def draw_genotype(genotype: dict) -> np.ndarray:
    """The 4 cells of a genotype side by side: uint8 RGB image (H, W, 3).

    Args:
      genotype: a genotype dict (genotype.derive_genotype / load_genotype); validated.
    """
    genotype_lib.validate_genotype(genotype)
    return registry.get(genotype_lib.space_of(genotype)).resolve("draw")(genotype)


def draw_cells(genotype: dict) -> np.ndarray:
    """An SCNAS genotype's 4 cells side by side (the registry's drawing for "scnas")."""
    # A bare Figure with its own Agg canvas: no pyplot state, nothing to close.
    fig = Figure(figsize=(4.2 * space.NUM_CELL_TYPES, 3.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, space.NUM_CELL_TYPES)
    for ax, cell_type in zip(axes, space.CELL_TYPES):
        _draw_cell(ax, cell_type, genotype["cells"][cell_type])
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def drawing_name(genotype: dict) -> str:
    """File name of a genotype's drawing: cells.png (SCNAS) or architecture.png."""
    return registry.get(genotype_lib.space_of(genotype)).drawing_name


def _macro_path(genotype: dict) -> tuple[list, list, str]:
    """([(label, level)] per box, [(i, j)] skip connections, title) of a macro genotype."""
    if genotype_lib.space_of(genotype) == "c2fnas":
        levels = [0, *genotype["topology"]]
        boxes = [("stem", 0)] + [(o.replace("_", "\n", 1), l)
                                  for o, l in zip(genotype["ops"], genotype["topology"])]
        # An up-step adds the most recent map of its level (c2fnas.py).
        skips = [(max(j for j in range(i) if levels[j] == levels[i]), i)
                 for i in range(1, len(levels)) if levels[i] < levels[i - 1]]
        return boxes, skips, "C2FNAS: topology (12 cells) and op per cell"
    d = genotype["decisions"]
    stages = [("enc0", 0), ("enc1", 1), ("enc2", 2), ("bottleneck", 3), ("dec2", 2),
              ("dec1", 1), ("dec0", 0)]
    boxes = [(f"{name}\n{d[name + '/op']}\nx{d[name + '/depth']}", level)
             for name, level in stages]
    skips = [(6 - i, i) for i in (4, 5, 6) if d[stages[i][0] + "/skip"] == "add"]
    return boxes, skips, "RONASMIS: op, depth and skip of each U-Net stage"


def draw_macro(genotype: dict) -> np.ndarray:
    """A macro (ronasmis, c2fnas) genotype as boxes by resolution with its skips."""
    boxes, skips, title = _macro_path(genotype)
    fig = Figure(figsize=(max(6.0, 1.25 * len(boxes)), 3.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs, ys = np.arange(len(boxes)), [-level for _, level in boxes]
    ax.plot(xs, ys, "-", color="0.4", zorder=1)
    for i, j in skips:
        ax.annotate("", (xs[j], ys[j]), (xs[i], ys[i]), arrowprops=dict(
            arrowstyle="->", linestyle="--", color="tab:blue", connectionstyle="arc3,rad=0.25"))
    for x, y, (label, _) in zip(xs, ys, boxes):
        ax.text(x, y, label, ha="center", va="center", fontsize=7, zorder=2,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.3"))
    ax.set_yticks([0, -1, -2, -3], ["1", "1/2", "1/4", "1/8"])
    ax.set_ylabel("resolution")
    ax.set_xticks([])
    ax.set_xlim(-0.7, len(boxes) - 0.3)
    ax.set_ylim(-3.6, 0.6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_genotype_drawing(path: str, genotype: dict) -> np.ndarray:
    """Writes `draw_genotype(genotype)` as a PNG to path (atomically); returns the image."""
    image = draw_genotype(genotype)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, format="png")
    fileio.write_atomic(path, buffer.getvalue())
    return image
