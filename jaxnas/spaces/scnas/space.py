"""The SCNAS search space as constants: cell types, candidate ops and the edges of a cell.

A cell has two inputs (s0, s1) and NUM_NODES intermediate nodes. Node j sums one edge from
each of s0, s1 and every earlier node, so a cell has 2 + 3 + 4 + 5 = 14 edges. States are
numbered 0 = s0, 1 = s1, 2 + j = node j. The cell output is the channel concatenation of
the nodes.

Architecture logits `arch` have shape (NUM_CELL_TYPES, NUM_EDGES, NUM_OPS). A sampled
choice (SCNAS Algorithm 2) is `{"index": int32 (4, 14, 2), "weight": float32 (4, 14, 2)}`:
per cell type and edge, the two drawn op indices and their renormalised weights.
"""

OP_NAMES = (
    "conv_3x3x3",
    "sep_conv_3x3x3_d2",
    "sep_conv_3x3x3_d3",
    "sep_conv_3x3x3_d4",
    "max_pool_3x3x3",
    "avg_pool_3x3x3",
    "identity",
    "zero",
)
NUM_OPS = len(OP_NAMES)
ZERO_OP = OP_NAMES.index("zero")

# Encoder R N R N R N, decoder E N E N E N (paper Figure 1).
CELL_TYPES = ("reduction", "normal_enc", "expansion", "normal_dec")
NUM_CELL_TYPES = len(CELL_TYPES)
CELL_LAYOUT = ("reduction", "normal_enc") * 3 + ("expansion", "normal_dec") * 3

NUM_NODES = 4
# Edge e goes from state EDGE_SRC[e] to node EDGE_DST[e], ordered by destination node.
EDGE_SRC = tuple(src for node in range(NUM_NODES) for src in range(2 + node))
EDGE_DST = tuple(node for node in range(NUM_NODES) for _ in range(2 + node))
NUM_EDGES = len(EDGE_SRC)
assert NUM_EDGES == 14
