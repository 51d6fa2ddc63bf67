"""The RONASMIS space and shared-weight U-Net: decisions, the traced (one compile for every
child) and static (compact derived params) forward passes agree, a training step through
a traced choice leaves the params of what was not chosen untouched, multiply-adds.
"""

import functools
import json

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jaxnas.nn import ops
from jaxnas.spaces import ronasmis
from tests import fixtures

SHAPE = (1, 16, 16, 16, 1)
WIDTH, NUM_CLASSES = 4, 3
NET = dict(in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH)
# Every op occurs at some stage, both depths and both skip options occur.
CHOICES = [
    np.asarray([(k + t) % v for t, v in enumerate(ronasmis.VOCAB_SIZES)], np.int32)
    for k in range(3)
]


def _data():
    key_x, key_y = jax.random.split(jax.random.key(1))
    image = jax.random.normal(key_x, SHAPE)
    labels = jax.random.randint(key_y, SHAPE[:4], 0, NUM_CLASSES)
    return image, labels


class SpaceTest(absltest.TestCase):
    def test_decisions_and_vocab_sizes(self):
        names = [name for name, _ in ronasmis.DECISIONS]
        self.assertLen(set(names), len(names))
        self.assertEqual(ronasmis.VOCAB_SIZES, tuple(len(o) for _, o in ronasmis.DECISIONS))
        self.assertLen(names, 4 * 2 + 3 * 3)
        self.assertEqual(names[:3], ["enc0/op", "enc0/depth", "enc1/op"])
        self.assertIn("dec2/skip", names)
        self.assertNotIn("enc0/skip", names)
        for name, options in ronasmis.DECISIONS:
            want = {"op": ronasmis.OP_NAMES, "depth": (1, 2), "skip": ("add", "none")}
            self.assertEqual(options, want[name.split("/")[1]])

    def test_dict_round_trip(self):
        rng = np.random.default_rng(0)
        for choice in [*CHOICES, *(fixtures.random_ronasmis_choice(rng) for _ in range(5))]:
            d = ronasmis.choice_to_dict(choice)
            d = json.loads(json.dumps(d))  # JSON-ready
            back = ronasmis.dict_to_choice(d)
            self.assertEqual(back.dtype, np.int32)
            np.testing.assert_array_equal(back, choice)
        self.assertEqual(ronasmis.choice_to_dict(CHOICES[1])["enc0/op"], "conv_3x3x1")

    def test_bad_dicts_raise(self):
        d = ronasmis.choice_to_dict(CHOICES[0])
        with self.assertRaisesRegex(ValueError, r"'enc1/op' = 'conv_5x5x5'.*conv_3x3x1"):
            ronasmis.dict_to_choice({**d, "enc1/op": "conv_5x5x5"})
        with self.assertRaisesRegex(ValueError, r"'dec0/depth' = 3.*\(1, 2\)"):
            ronasmis.dict_to_choice({**d, "dec0/depth": 3})
        missing = {k: v for k, v in d.items() if k != "dec1/skip"}
        with self.assertRaisesRegex(ValueError, r"missing decision 'dec1/skip'.*'add', 'none'"):
            ronasmis.dict_to_choice(missing)
        with self.assertRaisesRegex(ValueError, "unknown decisions.*enc9/op"):
            ronasmis.dict_to_choice({**d, "enc9/op": "conv_3x3x3"})

    def test_compact_spec_sizes(self):
        spec = ronasmis.network_spec(**NET)
        shared = ops.num_spec_params(spec)
        small = ronasmis.dict_to_choice(
            {name: options[0] if not name.endswith("skip") else "none"
             for name, options in ronasmis.DECISIONS}
        )
        compact = ronasmis.compact_params(spec, small)
        self.assertLess(ops.num_spec_params(compact), shared)
        self.assertLen(compact["enc0"]["blocks"], 1)
        self.assertEqual(list(compact["enc0"]["blocks"][0]), ["conv_3x3x3"])
        self.assertNotIn("skip", compact["dec2"])
        with self.assertRaisesRegex(ValueError, "out of range"):
            ronasmis.compact_params(spec, np.full(len(ronasmis.DECISIONS), 4))
        with self.assertRaisesRegex(ValueError, "static"):
            ronasmis.compact_params(spec, jnp.asarray(small))


class ForwardTest(absltest.TestCase):
    """The traced forward pass, compiled once, against each child's compact network."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = ronasmis.init_network(jax.random.key(0), **NET)
        cls.image, _ = _data()
        cls.traced = jax.jit(
            functools.partial(ronasmis.apply_network, impl="fast", return_aux=True)
        )
        cls.outputs = [cls.traced(cls.params, cls.image, jnp.asarray(c)) for c in CHOICES]

    def test_shapes_and_one_compile(self):
        for logits, aux in self.outputs:
            chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
            chex.assert_shape(aux, [(1, 4, 4, 4, NUM_CLASSES), (1, 8, 8, 8, NUM_CLASSES)])
            chex.assert_tree_all_finite((logits, aux))
        self.assertEqual(self.traced._cache_size(), 1)
        # Different children give different outputs (the choice is really read).
        self.assertGreater(float(jnp.max(jnp.abs(self.outputs[0][0] - self.outputs[1][0]))),
                           1e-3)

    def test_traced_equals_compact_static(self):
        for choice, (logits, aux) in zip(CHOICES, self.outputs):
            compact = ronasmis.compact_params(self.params, choice)
            static = jax.jit(
                lambda p, x, c=choice: ronasmis.apply_network(p, x, c, return_aux=True)
            )
            got_logits, got_aux = static(compact, self.image)
            np.testing.assert_allclose(got_logits, logits, atol=1e-5, rtol=1e-5)
            for a, b in zip(got_aux, aux):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    def test_bad_inputs_raise(self):
        with self.assertRaisesRegex(ValueError, "divisible by 8"):
            ronasmis.apply_network(self.params, jnp.zeros((1, 12, 16, 16, 1)), CHOICES[0])
        with self.assertRaisesRegex(ValueError, "17 ints"):
            ronasmis.apply_network(self.params, self.image, CHOICES[0][:5])


class TrainStepTest(absltest.TestCase):
    """A jitted search step on the shared weights with a traced child choice."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = ronasmis.init_network(jax.random.key(0), **NET)
        image, labels = _data()
        cls.batch = {"image": image, "label": labels}
        tx = optax.adam(1e-3)
        loss_fn = functools.partial(ronasmis.ds_loss, num_classes=NUM_CLASSES, ce_weight=1.0,
                                    impl="xla")

        def step(params, opt_state, batch, choice):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, choice)
            updates, opt_state = tx.update(grads, opt_state, params)
            return loss, grads, optax.apply_updates(params, updates)

        cls.step = jax.jit(step)
        # enc0: conv_3x3x3 at depth 1; dec2: no skip; dec1: skip.
        d = ronasmis.choice_to_dict(CHOICES[0])
        d.update({"enc0/op": "conv_3x3x3", "enc0/depth": 1, "dec2/skip": "none",
                  "dec1/skip": "add"})
        cls.choice = ronasmis.dict_to_choice(d)
        opt_state = tx.init(cls.params)
        cls.result = cls.step(cls.params, opt_state, cls.batch, jnp.asarray(cls.choice))
        cls.other = cls.step(cls.params, opt_state, cls.batch, jnp.asarray(CHOICES[1]))

    def test_loss_finite_and_one_compile(self):
        for loss, grads, new_params in (self.result, self.other):
            chex.assert_tree_all_finite((loss, grads, new_params))
            self.assertGreater(float(loss), 0.0)
        self.assertEqual(self.step._cache_size(), 1)

    def test_only_the_chosen_child_gets_gradient(self):
        _, grads, new_params = self.result
        enc0, dec2 = grads["enc0"]["blocks"], grads["dec2"]
        self.assertTrue(np.all(np.asarray(enc0[0]["conv_3x3x1"]["w"]) == 0))
        self.assertTrue(np.any(np.asarray(enc0[0]["conv_3x3x3"]["w"]) != 0))
        self.assertTrue(np.all(np.asarray(enc0[1]["conv_3x3x3"]["w"]) == 0))
        self.assertTrue(np.all(np.asarray(dec2["skip"]["w"]) == 0))
        self.assertTrue(np.any(np.asarray(grads["dec1"]["skip"]["w"]) != 0))
        # Exactly the leaves of the derived network get a (nonzero) gradient and move.
        used = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(
            ronasmis.compact_params(self.params, self.choice))}
        flat_new = dict(
            (jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(new_params)
        )
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            name = jax.tree_util.keystr(path)
            moved = np.any(np.asarray(flat_new[name]) != np.asarray(_leaf(self.params, path)))
            self.assertEqual(bool(np.any(np.asarray(g) != 0)), name in used, name)
            self.assertEqual(bool(moved), name in used, name)


def _leaf(tree, path):
    for entry in path:
        tree = tree[entry.key if hasattr(entry, "key") else entry.idx]
    return tree


class CostTest(absltest.TestCase):
    def test_macs_match_the_traced_convs(self):
        shape = (1, 16, 8, 24, 2)  # anisotropic: a transposed axis would be caught
        net = dict(in_channels=2, num_classes=5, width=3)
        params = jax.eval_shape(lambda k: ronasmis.init_network(k, **net), jax.random.key(0))
        for choice in CHOICES:
            jaxpr = jax.make_jaxpr(
                lambda p, x, c=choice: ronasmis.apply_network(p, x, c, impl="xla")
            )(params, jax.ShapeDtypeStruct(shape, jnp.float32))
            macs = ronasmis.network_macs(choice, patch_size=shape[1:4], **net)
            self.assertEqual(macs, fixtures.conv_macs_in_jaxpr(jaxpr.jaxpr))

    def test_depth_two_costs_more(self):
        d = ronasmis.choice_to_dict(CHOICES[0])
        shallow = {**d, **{n: 1 for n, _ in ronasmis.DECISIONS if n.endswith("depth")}}
        deep = {**shallow, "enc1/depth": 2}
        kwargs = dict(patch_size=(32, 32, 16), **NET)
        macs_shallow = ronasmis.network_macs(ronasmis.dict_to_choice(shallow), **kwargs)
        macs_deep = ronasmis.network_macs(ronasmis.dict_to_choice(deep), **kwargs)
        self.assertGreater(macs_shallow, 0.0)
        self.assertGreater(macs_deep, macs_shallow)
        # The difference is one more block of enc1's op at level 1.
        taps = {"conv_3x3x3": 27, "conv_3x3x1": 9, "p3d_3x3x1_1x1x3": 12, "conv_3x3x3_d2": 27}
        c1, voxels1 = 2 * WIDTH, 32 * 32 * 16 / 8
        self.assertAlmostEqual(macs_deep - macs_shallow,
                               taps[d["enc1/op"]] * c1**2 * voxels1, places=6)


if __name__ == "__main__":
    absltest.main()
