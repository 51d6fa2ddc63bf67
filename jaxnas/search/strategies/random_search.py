"""Random search on the SCNAS space: sample genotypes, train each briefly, keep the best.

The baseline a NAS method has to beat (Li and Talwalkar 2019): `num_candidates` uniform
random genotypes (an op per edge, zero included: genotype.random_genotype), each trained
from fresh weights for num_steps / num_candidates steps, scored by patient-wise Dice on
the validation patches (common.val_batch). The best one's compact network, with the
weights it was scored with, is the result. Every candidate runs through the supernet with
its one-op choice as a traced input, so all of them share one compile.
"""

import functools
import time

import jax
import numpy as np
from absl import logging

from jaxnas import config as config_lib
from jaxnas import evaluation
from jaxnas import fit
from jaxnas import phases
from jaxnas.io import writer as writer_lib
from jaxnas.nn import losses
from jaxnas.search import bilevel
from jaxnas.search.strategies import common
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import fixed_network
from jaxnas.spaces.scnas import network


def run(config: config_lib.Config, workdir: str) -> dict:
    start_wall = time.time()
    data = phases.load_training_data(config, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    s, num_classes = config.search, data.dataset.num_classes
    in_channels = len(data.dataset.modalities)
    _, num_steps = common.budget(config, len(theta))
    per_candidate = max(1, num_steps // s.num_candidates)

    impl = phases.resolve_impl(s.impl)
    init = functools.partial(network.init_network, in_channels=in_channels,
                             num_classes=num_classes, width=s.width)
    apply = functools.partial(network.apply_network, impl=impl)
    dice_ce = functools.partial(losses.dice_ce, num_classes=num_classes, ce_weight=s.ce_weight)

    def loss_fn(params, batch):  # The candidate's choice travels with its batch.
        return dice_ce(apply(params, batch["image"], batch["choice"]), batch["label"])

    tx = fit.make_optimizer(s.lr_w, s.betas_w)
    step_fn = jax.jit(functools.partial(fit.train_step, loss_fn=loss_fn, tx=tx),
                      donate_argnums=0)
    score_fn = jax.jit(lambda p, b, c: common.patch_dice(apply(p, b["image"], c), b["label"]))
    val = common.val_batch(alpha, config)
    writer = writer_lib.MetricWriter(workdir)
    logging.info("random search: %d candidates x %d steps, patch %s, width %d",
                 s.num_candidates, per_candidate, config.data.patch_size, s.width)

    best, scores, step = None, [], 0
    for n in range(s.num_candidates):
        seed = config.seed * 1000 + n
        genotype = genotype_lib.random_genotype(seed)
        index = genotype_lib.genotype_to_indices(genotype)
        choice = bilevel.choice_from_indices(index)
        state = fit.init_state(init(jax.random.fold_in(jax.random.key(config.seed), n)), tx)
        tick = time.time()
        for _ in range(per_candidate):
            batch = {**phases.step_batch(theta, config, step, 0), "choice": choice}
            state, m = step_fn(state, batch)
            step += 1
            if step % s.log_every == 0:
                m = jax.device_get(m)
                evaluation.check_finite(m, step, workdir)
                writer.write_scalars(step, m)
        dice = float(np.mean(jax.device_get(score_fn(state.params, val, choice))))
        scores.append({"seed": seed, "val_dice": round(dice, 4)})
        writer.write_scalars(step, {"random/val_dice": dice})
        logging.info("candidate %d/%d (seed %d): validation Dice %.4f (%.1f s)", n + 1,
                     s.num_candidates, seed, dice, time.time() - tick)
        if best is None or dice > best[0]:
            best = (dice, genotype, fixed_network.compact_from_supernet(state.params, index))
    search_seconds = time.time() - start_wall

    dice, genotype, params = best
    description = {"kind": "genotype", "source": "random search", "genotype": genotype,
                   "in_channels": in_channels, "num_classes": num_classes, "width": s.width}
    summary = common.finish(config, workdir, data, writer, description=description,
                            params=params, step=step, start_wall=start_wall,
                            search_seconds=search_seconds,
                            genotype_extra={"val_dice": round(dice, 4), "candidates": scores})
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
