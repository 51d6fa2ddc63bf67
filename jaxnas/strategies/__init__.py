"""Search strategies behind `--strategy`, one entry point: `run(config, workdir)`.

    scnas, gdas, darts   bi-level gradient search on the SCNAS cell space (train.py);
    random               random genotypes of that space, briefly trained, best kept
                         (random_search.py);
    ronasmis             LSTM controller + REINFORCE over a macro U-Net space, children
                         sharing weights trained throughout, no retraining
                         (ronasmis_search.py);
    c2fnas               coarse stage over the topology (the resolution of 12 cells,
                         U-paths), then fine op search on the chosen one (c2fnas_search.py).

Each writes the same outputs: genotype.json (genotype.py, its `space` says which),
model.json + plan.json + final/ (what train, evaluate and predict read), summary.json
with the held-out Dice and the search's cost (search_seconds, wall_seconds, derived).
"""

from jaxnas import config as config_lib


def run(config: config_lib.Config, workdir: str) -> dict:
    strategy = config.search.strategy
    # Imported on use: each strategy loads only its own modules.
    if strategy == "random":
        from jaxnas.strategies import random_search

        return random_search.run(config, workdir)
    if strategy == "ronasmis":
        from jaxnas.strategies import ronasmis_search

        return ronasmis_search.run(config, workdir)
    if strategy == "c2fnas":
        from jaxnas.strategies import c2fnas_search

        return c2fnas_search.run(config, workdir)
    from jaxnas import train

    return train.search_and_evaluate(config, workdir)
