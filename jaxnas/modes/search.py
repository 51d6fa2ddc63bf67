"""--mode=search: runs the search strategy of `--strategy`; one entry point, `run`.

    scnas, gdas, darts   bi-level gradient search on the SCNAS cell space, then derive,
                         fine-tune and evaluate (search/strategies/gradient_search.py);
    random               random genotypes of that space, briefly trained, best kept
                         (random_search.py);
    ronasmis             LSTM controller + REINFORCE over a macro U-Net space, children
                         sharing weights trained throughout (ronasmis_search.py);
    c2fnas               coarse stage over the topology (the resolution of 12 cells),
                         then a fine op search on the chosen one (c2fnas_search.py).

Each writes the same outputs: genotype.json (spaces/genotype.py, its `space` says which),
model.json + plan.json + final/ (what train, evaluate and predict read), summary.json
with the held-out Dice and the search's cost (search_seconds, wall_seconds, derived).
"""

import importlib

from jaxnas import config as config_lib

# --strategy -> "module:function(config, workdir) -> summary", imported on use so that
# each strategy loads only its own modules.
ENTRY_POINTS = {
    "scnas": "jaxnas.search.strategies.gradient_search:search_and_evaluate",
    "gdas": "jaxnas.search.strategies.gradient_search:search_and_evaluate",
    "darts": "jaxnas.search.strategies.gradient_search:search_and_evaluate",
    "random": "jaxnas.search.strategies.random_search:run",
    "ronasmis": "jaxnas.search.strategies.ronasmis_search:run",
    "c2fnas": "jaxnas.search.strategies.c2fnas_search:run",
}
assert set(ENTRY_POINTS) == set(config_lib.STRATEGIES)


def run(config: config_lib.Config, workdir: str) -> dict:
    module, function = ENTRY_POINTS[config.search.strategy].split(":")
    return getattr(importlib.import_module(module), function)(config, workdir)
