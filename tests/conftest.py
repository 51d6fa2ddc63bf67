"""Test set-up: CPU only, cheap compiles. Runs before any test module imports jax."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Set through the environment so that CLI subprocesses compile the same way and share the
# persistent compilation cache: the search network compiles once per suite, not per test.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/jaxnas-test-jit-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Compiles about 1 s faster each; the tests check behaviour, not speed.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir) read --test_tmpdir; pytest does not parse absl flags.
flags.FLAGS.mark_as_parsed()

# Tests that compile the tiny SCNAS supernet's two steps (~50 s cold): one xdist worker
# runs them in collection order, so the device check compiles them into the persistent
# cache and the search tests read them back, instead of two workers compiling them at
# the same time.
TINY_SUPERNET = ("tests/device_check_test.py::DeviceCheckTest",
                 "tests/gradient_search_test.py::SearchRunTest")


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":  # as ./run.sh test runs; else xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if nodeid.startswith(TINY_SUPERNET):
                return "tiny-supernet"
            return super()._split_scope(nodeid)

    return Scheduler(config, log)
