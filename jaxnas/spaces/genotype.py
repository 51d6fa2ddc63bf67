"""The derived architecture (genotype) as JSON: derive from alpha, save, load, validate.

One file format for every strategy; `space` says which search space the decisions are of
(version 1 files have no `space` and are SCNAS cells):

    "scnas"     cell decisions: an op per edge of the 4 cell types (below); scnas, gdas,
                darts and random search write it.
    "ronasmis"  {"decisions": {"enc0/op": "conv_3x3x3", "enc0/depth": 2, ...}}: the macro
                U-Net choices of spaces/ronasmis.py (DECISIONS).
    "c2fnas"    {"topology": [12 levels], "ops": [12 op names]}: the resolution of each
                cell (a U-path, spaces/c2fnas.py) and its op.

Each space's own checks are found through spaces/registry.py.

An SCNAS genotype:

    {"format": "jaxnas.genotype", "version": 2, "space": "scnas",
     "op_names": [... space.OP_NAMES ...],
     "cells": {cell_type: [{"edge": e, "src": s, "dst": d, "op": name,
                            "probs": [8 floats]}, ...14 edges], ...4 cell types},
     "extra": {...}}

`src` is a state index (0 = s0, 1 = s1, 2 + j = node j) and `dst` a node index, as in
space.EDGE_SRC / space.EDGE_DST. `op` is the argmax of alpha on the edge, zero included
(SCNAS: zero = no connection); `probs` is softmax(alpha) in op_names order. `extra` holds
anything else worth keeping with the architecture (parameter count, GFLOPs, step, ...).
"""

import json

import numpy as np

from jaxnas.io import fileio
from jaxnas.spaces import registry
from jaxnas.spaces.scnas import space

FORMAT = "jaxnas.genotype"
VERSION = 2  # 2 added "space"; version 1 files (SCNAS cells) still load.
SPACES = tuple(registry.SPACES)


def derive_genotype(arch) -> dict:
    """Genotype dict (module docstring) from arch logits (4, 14, 8); argmax per edge."""
    arch = np.asarray(arch, np.float64)
    expected = (space.NUM_CELL_TYPES, space.NUM_EDGES, space.NUM_OPS)
    if arch.shape != expected:
        raise ValueError(f"arch has shape {arch.shape}, expected {expected}")
    shifted = np.exp(arch - arch.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    cells = {}
    for t, cell_type in enumerate(space.CELL_TYPES):
        cells[cell_type] = [
            {
                "edge": e,
                "src": space.EDGE_SRC[e],
                "dst": space.EDGE_DST[e],
                "op": space.OP_NAMES[int(np.argmax(arch[t, e]))],
                "probs": [float(p) for p in probs[t, e]],
            }
            for e in range(space.NUM_EDGES)
        ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "space": "scnas",
        "op_names": list(space.OP_NAMES),
        "cells": cells,
        "extra": {},
    }


def random_genotype(seed: int) -> dict:
    """The paper's random-architecture baseline: a uniform random op per edge (zero
    included), seeded; `probs` are uniform and extra records the seed."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, space.NUM_OPS, size=(space.NUM_CELL_TYPES, space.NUM_EDGES))
    # Logits that are 0 except a tie-breaking epsilon on the drawn op: argmax picks it and
    # the stored probs stay uniform to 6 digits.
    arch = np.zeros((space.NUM_CELL_TYPES, space.NUM_EDGES, space.NUM_OPS))
    np.put_along_axis(arch, index[..., None], 1e-9, axis=-1)
    genotype = derive_genotype(arch)
    genotype["extra"] = {"source": "random", "seed": int(seed)}
    return genotype


def save_genotype(path: str, genotype: dict, extra: dict | None = None) -> None:
    """Writes genotype (plus `extra`, merged into genotype["extra"]) atomically to path.

    Written to a temporary file in the same folder, then os.replace: a reader never sees
    a half-written file, even if the run dies mid-write.
    """
    genotype = {**genotype, "extra": {**genotype.get("extra", {}), **(extra or {})}}
    validate_genotype(genotype)
    fileio.write_json(path, genotype)


def load_genotype(path: str) -> dict:
    """Reads and validates a genotype; ValueError naming the file on bad content."""
    try:
        with open(path, encoding="utf-8") as f:
            genotype = json.load(f)
        validate_genotype(genotype)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid genotype: {e}") from e
    return genotype


def macro_genotype(space_name: str, fields: dict, extra: dict | None = None) -> dict:
    """A ronasmis or c2fnas genotype from its decision fields (module docstring)."""
    genotype = {"format": FORMAT, "version": VERSION, "space": space_name, **fields,
                "extra": dict(extra or {})}
    validate_genotype(genotype)
    return genotype


def space_of(genotype: dict) -> str:
    return genotype.get("space", "scnas")


def validate_genotype(genotype) -> None:
    """Raises ValueError unless genotype has this module's format (any extra is allowed)."""
    if not isinstance(genotype, dict) or genotype.get("format") != FORMAT:
        raise ValueError(f'expected a JSON object with "format": "{FORMAT}"')
    if genotype.get("version") not in (1, VERSION):
        raise ValueError(f"unsupported version {genotype.get('version')!r}, expected {VERSION}")
    if not isinstance(genotype.get("extra", {}), dict):
        raise ValueError('"extra" must be a JSON object')
    kind = space_of(genotype)
    if kind not in SPACES or (genotype["version"] == 1 and "space" in genotype):
        raise ValueError(f"space must be one of {SPACES} (version 2), got {kind!r}")
    registry.get(kind).resolve("validate")(genotype)


def validate_cells(genotype: dict) -> None:
    """The SCNAS space's checks: op names, the 4 cell types and their 14 edges each."""
    if genotype.get("op_names") != list(space.OP_NAMES):
        raise ValueError(f"op_names {genotype.get('op_names')!r} differ from {space.OP_NAMES}")
    cells = genotype.get("cells")
    if not isinstance(cells, dict) or set(cells) != set(space.CELL_TYPES):
        raise ValueError(f"cells must have exactly the keys {space.CELL_TYPES}")
    for cell_type, edges in cells.items():
        if not isinstance(edges, list) or len(edges) != space.NUM_EDGES:
            raise ValueError(f"cell {cell_type!r} must list {space.NUM_EDGES} edges")
        for e, edge in enumerate(edges):
            _validate_edge(cell_type, e, edge)


def _validate_edge(cell_type: str, e: int, edge) -> None:
    where = f"cell {cell_type!r} edge {e}"
    if not isinstance(edge, dict):
        raise ValueError(f"{where}: expected an object")
    src_dst = (edge.get("edge"), edge.get("src"), edge.get("dst"))
    if src_dst != (e, space.EDGE_SRC[e], space.EDGE_DST[e]):
        raise ValueError(f"{where}: edge/src/dst {src_dst} do not match the search space")
    if edge.get("op") not in space.OP_NAMES:
        raise ValueError(f"{where}: unknown op {edge.get('op')!r}")
    probs = edge.get("probs")
    if not isinstance(probs, list) or len(probs) != space.NUM_OPS:
        raise ValueError(f"{where}: probs must be a list of {space.NUM_OPS} numbers")


def genotype_to_indices(genotype: dict) -> np.ndarray:
    """Op index per cell type and edge: int32 (4, 14), in space.CELL_TYPES order."""
    validate_genotype(genotype)
    if not registry.get(space_of(genotype)).has_cells:
        raise ValueError(f"a {space_of(genotype)} genotype has no SCNAS cells")
    return np.array(
        [
            [space.OP_NAMES.index(edge["op"]) for edge in genotype["cells"][cell_type]]
            for cell_type in space.CELL_TYPES
        ],
        dtype=np.int32,
    )
