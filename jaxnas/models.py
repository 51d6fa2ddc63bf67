"""Trainable fixed architectures behind one interface: a genotype's network or a baseline.

A model is described by a JSON-ready dict (`model.json` in a work dir), so `predict`
and `evaluate` rebuild exactly what was trained:

    {"kind": "genotype", "genotype": {...genotype.py format...}, "source": "...",
     "in_channels": int, "num_classes": int, "width": int}

A genotype of any space (genotype.py: scnas cells, a ronasmis macro U-Net, a c2fnas
topology with its ops) builds its derived network here, with compact params.
    {"kind": "uresnet" | "unet", "source": the same, "in_channels", "num_classes", "width"}

`build(description, impl=..., ce_weight=...)` turns it into a `Model` of pure functions.
"""

import collections
import functools
import json
from typing import Any, Callable, NamedTuple

import jax

from jaxnas import config as config_lib
from jaxnas.baselines import unet
from jaxnas.baselines import uresnet
from jaxnas.nn import losses
from jaxnas.spaces import c2fnas
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces import registry
from jaxnas.spaces import ronasmis
from jaxnas.spaces.scnas import cost
from jaxnas.spaces.scnas import fixed_network
from jaxnas.spaces.scnas import network

KINDS = ("genotype", *config_lib.BASELINES)


class Model(NamedTuple):
    init: Callable[[jax.Array], Any]  # key -> params
    apply: Callable[[Any, jax.Array], jax.Array]  # (params, image) -> logits
    loss: Callable[[Any, dict], jax.Array]  # (params, batch) -> scalar (deep supervision in)
    cost: Callable[[tuple[int, int, int]], dict]  # patch size -> {"params", "gflops", ...}


def describe(architecture: str, *, in_channels: int, num_classes: int, width: int,
             seed: int = 0, stem_stride: int = 1,
             node_scale: float = network.DEFAULT_NODE_SCALE,
             width_growth: int = network.DEFAULT_GROWTH,
             deep_supervision: bool = False) -> dict:
    """The model description of `--architecture`: a baseline name ("uresnet", "unet"),
    "random", "random:SEED" or a genotype.json path (found on this task, or on another
    one: architecture transfer)."""
    common = {"in_channels": in_channels, "num_classes": num_classes, "width": width}
    if architecture in config_lib.BASELINES:
        return {"kind": architecture, "source": architecture, **common}
    scnas = scnas_options(stem_stride=stem_stride, node_scale=node_scale,
                          width_growth=width_growth, deep_supervision=deep_supervision)
    if architecture == "random" or architecture.startswith("random:"):
        random_seed = int(architecture.partition(":")[2] or seed)
        return {"kind": "genotype", "source": f"random:{random_seed}",
                "genotype": genotype_lib.random_genotype(random_seed), **scnas, **common}
    genotype = genotype_lib.load_genotype(architecture)  # ValueError names the file.
    cells = registry.get(genotype_lib.space_of(genotype)).has_cells
    extra = scnas if cells else {}
    return {"kind": "genotype", "source": architecture, "genotype": genotype, **extra, **common}


def scnas_options(*, stem_stride: int, node_scale: float, width_growth: int,
                  deep_supervision: bool) -> dict:
    """The SCNAS network's options in a description (model.json)."""
    return {"stem_stride": stem_stride, "node_scale": node_scale, "width_growth": width_growth,
            "deep_supervision": deep_supervision}


_BUILT: collections.OrderedDict = collections.OrderedDict()  # The last few Models built.
_BUILT_KEEP = 8


def build(description: dict, *, impl: str = "fast", ce_weight: float = 0.0,
          dice_background: bool = True, batch_dice: bool = False) -> Model:
    """The Model of a description (module docstring); the loss keywords go to dice_ce.

    The same arguments give the same Model object in a process, so jitted functions of it
    (the training step, `probabilities_fn`) are traced once: the folds of an evaluation,
    the fine-tune's two evaluations and the tests rebuild the same network many times.
    """
    key = (json.dumps(description, sort_keys=True, default=repr), impl, ce_weight,
           dice_background, batch_dice)
    if key not in _BUILT:
        _BUILT[key] = _build(description, impl=impl, ce_weight=ce_weight,
                             dice_background=dice_background, batch_dice=batch_dice)
        while len(_BUILT) > _BUILT_KEEP:
            _BUILT.popitem(last=False)
    _BUILT.move_to_end(key)
    return _BUILT[key]


def _build(description: dict, *, impl: str, ce_weight: float, dice_background: bool,
           batch_dice: bool) -> Model:
    kind = description.get("kind")
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    c_in, k, width = (description[n] for n in ("in_channels", "num_classes", "width"))
    loss_fn = functools.partial(losses.dice_ce, num_classes=k, ce_weight=ce_weight,
                                include_background=dice_background, batch_dice=batch_dice)
    if kind == "uresnet":
        apply = functools.partial(uresnet.apply_uresnet, impl=impl)

        def ds_loss(params, batch):
            logits, aux = uresnet.apply_uresnet(params, batch["image"], impl=impl,
                                                return_aux=True)
            return uresnet.deep_supervision_loss(loss_fn, logits, aux, batch["label"])

        return Model(
            init=functools.partial(uresnet.init_uresnet, in_channels=c_in, num_classes=k,
                                   width=width),
            apply=apply, loss=ds_loss,
            cost=lambda patch: uresnet.uresnet_cost(in_channels=c_in, num_classes=k,
                                                    width=width, patch_size=patch))
    if kind == "unet":
        apply = functools.partial(unet.apply_unet, impl=impl)
        return Model(
            init=functools.partial(unet.init_unet, in_channels=c_in, num_classes=k,
                                   width=width),
            apply=apply,
            loss=lambda params, batch: loss_fn(apply(params, batch["image"]), batch["label"]),
            cost=lambda patch: unet.unet_cost(in_channels=c_in, num_classes=k, width=width,
                                              patch_size=patch))
    genotype = description["genotype"]
    space_model = registry.get(genotype_lib.space_of(genotype)).resolve("model")
    return space_model(genotype, description, impl=impl, loss_fn=loss_fn)


def scnas_model(genotype, description, *, impl, loss_fn) -> Model:
    """The fixed network of an SCNAS genotype (the registry's builder for "scnas")."""
    c_in, k, width = (description[n] for n in ("in_channels", "num_classes", "width"))
    index = genotype_lib.genotype_to_indices(genotype)
    static = fixed_network.static_index(index)
    stride = int(description.get("stem_stride", 1))
    node_scale = float(description.get("node_scale", network.DEFAULT_NODE_SCALE))
    # Models saved before the growth option have the paper's doubling.
    width_growth = int(description.get("width_growth", network.DEFAULT_GROWTH))
    deep_supervision = bool(description.get("deep_supervision", False))  # Absent before.
    init = functools.partial(fixed_network.init_fixed, index=static, in_channels=c_in,
                             num_classes=k, width=width, stem_stride=stride,
                             node_scale=node_scale, width_growth=width_growth,
                             deep_supervision=deep_supervision)
    apply = functools.partial(fixed_network.apply_fixed, index=static, impl=impl)

    def loss(params, batch):
        if not deep_supervision:
            return loss_fn(apply(params, batch["image"]), batch["label"])
        logits, aux = apply(params, batch["image"], return_aux=True)
        return uresnet.deep_supervision_loss(loss_fn, logits, aux, batch["label"])

    def genotype_cost(patch):
        params = jax.eval_shape(init, jax.random.key(0))
        return {"params": network.num_params(params),
                "gflops": cost.derived_macs(index, in_channels=c_in, num_classes=k,
                                            width=width, patch_size=patch,
                                            stem_stride=stride,
                                            node_scale=node_scale, width_growth=width_growth) / 1e9,
                "patch_size": list(patch)}

    return Model(init=init, apply=apply, loss=loss, cost=genotype_cost)


def ronasmis_model(genotype, description, *, impl, loss_fn) -> Model:
    """The compact RONASMIS network of a genotype's decisions (registry builder)."""
    c_in, k, width = (description[n] for n in ("in_channels", "num_classes", "width"))
    choice = tuple(int(c) for c in ronasmis.dict_to_choice(genotype["decisions"]))

    def init(key):
        shared = ronasmis.init_network(key, in_channels=c_in, num_classes=k, width=width)
        return ronasmis.compact_params(shared, choice)

    apply = functools.partial(ronasmis.apply_network, choice=choice, impl=impl)

    def ds_loss(params, batch):
        logits, aux = ronasmis.apply_network(params, batch["image"], choice, impl=impl,
                                             return_aux=True)
        return uresnet.deep_supervision_loss(loss_fn, logits, aux, batch["label"])

    def model_cost(patch):
        params = jax.eval_shape(init, jax.random.key(0))
        macs = ronasmis.network_macs(choice, in_channels=c_in, num_classes=k, width=width,
                                     patch_size=patch)
        return {"params": network.num_params(params), "gflops": macs / 1e9,
                "patch_size": list(patch)}

    return Model(init=init, apply=lambda params, image: apply(params, image), loss=ds_loss,
                 cost=model_cost)


def c2fnas_model(genotype, description, *, impl, loss_fn) -> Model:
    """The derived C2FNAS network of a genotype's topology and ops (registry builder)."""
    c_in, k, width = (description[n] for n in ("in_channels", "num_classes", "width"))
    topology, ops_ = c2fnas.from_json(genotype)

    def init(key):
        supernet = c2fnas.init_supernet(key, in_channels=c_in, num_classes=k, width=width)
        return c2fnas.compact_params(supernet, topology, ops_)

    def apply(params, image):
        return c2fnas.apply_derived(params, image, topology, ops_, impl=impl)

    def model_cost(patch):
        params = jax.eval_shape(init, jax.random.key(0))
        macs = c2fnas.derived_macs(topology, ops_, in_channels=c_in, num_classes=k,
                                   width=width, patch_size=patch)
        return {"params": network.num_params(params), "gflops": macs / 1e9,
                "patch_size": list(patch)}

    return Model(init=init, apply=apply,
                 loss=lambda params, batch: loss_fn(apply(params, batch["image"]),
                                                    batch["label"]),
                 cost=model_cost)


def probabilities_fn(model: Model, params):
    """windows (b, x, y, z, c) -> softmax probabilities, jitted once per model; params are
    an argument of the compiled program, not constants baked into it."""
    return functools.partial(_probabilities(model), params)


@functools.lru_cache(maxsize=_BUILT_KEEP)
def _probabilities(model: Model):
    return jax.jit(lambda p, x: jax.nn.softmax(model.apply(p, x)))
