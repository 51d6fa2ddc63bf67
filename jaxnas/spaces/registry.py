"""One entry per search space: how its genotypes are validated, built and drawn.

genotype.validate_genotype, models.build and cell_drawing look a genotype's space up here
instead of chaining `if space == ...`. A new space adds one entry (and its module).
Functions are named "module:function" and imported on first use: the macro spaces load
jax, while the SCNAS genotype path stays numpy-only, and models.py imports the spaces.
"""

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Space:
    name: str
    # genotype -> None; raises ValueError naming what is wrong (format fields checked).
    validate: str
    # (genotype, description, *, impl, loss_fn) -> models.Model.
    model: str
    # genotype -> (h, w, 3) uint8 RGB drawing.
    draw: str
    drawing_name: str  # File name of the drawing in a work dir's pictures.
    has_cells: bool  # Cells with SCNAS nodes (--node_scale applies, genotype_to_indices).

    def resolve(self, field: str):
        module, function = getattr(self, field).split(":")
        return getattr(importlib.import_module(module), function)


SPACES = {
    "scnas": Space("scnas", validate="jaxnas.spaces.genotype:validate_cells",
                   model="jaxnas.models:scnas_model",
                   draw="jaxnas.spaces.cell_drawing:draw_cells", drawing_name="cells.png",
                   has_cells=True),
    "ronasmis": Space("ronasmis", validate="jaxnas.spaces.ronasmis:validate_genotype",
                      model="jaxnas.models:ronasmis_model",
                      draw="jaxnas.spaces.cell_drawing:draw_macro",
                      drawing_name="architecture.png", has_cells=False),
    "c2fnas": Space("c2fnas", validate="jaxnas.spaces.c2fnas:validate_genotype",
                    model="jaxnas.models:c2fnas_model",
                    draw="jaxnas.spaces.cell_drawing:draw_macro",
                    drawing_name="architecture.png", has_cells=False),
}


def get(name: str) -> Space:
    if name not in SPACES:
        raise ValueError(f"space must be one of {tuple(SPACES)}, got {name!r}")
    return SPACES[name]
