"""Test set-up: CPU only, cheap compiles. Runs before any test module imports jax."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Compiles about 1 s faster each; the tests check behaviour, not speed.
jax.config.update("jax_disable_most_optimizations", True)

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir) read --test_tmpdir; pytest does not parse absl flags.
flags.FLAGS.mark_as_parsed()
