"""loop.run: a planned phase re-sized from its own measured steps (loop.Resize)."""

import time

import flax
import jax.numpy as jnp
from absl.testing import absltest
from jaxtyping import Array, Int

from jaxnas import loop
from jaxnas.io import checkpoints
from jaxnas.io import writer as writer_lib

STEP_SECONDS = 0.02


@flax.struct.dataclass
class _State:
    step: Int[Array, ""]
    horizon: Int[Array, ""]


def _step(state, step):
    time.sleep(STEP_SECONDS)
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0 / (step + 1))}


class ResizeTest(absltest.TestCase):

    def _run(self, state, num_steps, resize, ckpt_every=100):
        workdir = self.create_tempdir().full_path
        manager = checkpoints.make_manager(workdir)
        writer = writer_lib.MetricWriter(workdir)
        try:
            return loop.run(state, schedule=loop.Schedule(num_steps, 4, 100, ckpt_every),
                            step_fn=_step, loss_key="loss", manager=manager, writer=writer,
                            workdir=workdir, resize=resize)
        finally:
            writer.close()

    def _resize(self, at_step, seconds_left, calls, every=0, replay=(), deadline=None):
        def end_fn(per_step):  # seconds_left from each re-set, or a fixed deadline.
            calls.append(("end", per_step))
            return deadline or time.time() + seconds_left

        return loop.Resize(at_step=at_step, end_fn=end_fn, every=every, replay=replay,
                           apply_fn=lambda state, n: state.replace(horizon=jnp.int32(n)),
                           record_fn=lambda step, n: calls.append(("resize", n, step)))

    def test_length_follows_the_measured_rate(self):
        calls = []
        state = self._run(_State(jnp.int32(0), jnp.int32(200)), 200,
                          self._resize(6, 20 * STEP_SECONDS, calls))
        (_, per_step), (_, n, at) = calls
        # Steps 4..6 timed (sleep plus overhead); 20 steps' time left after step 6.
        self.assertBetween(per_step, STEP_SECONDS, 3 * STEP_SECONDS)
        self.assertBetween(n, 6 + 5, 6 + 20)
        self.assertEqual(at, 6)
        self.assertEqual(int(state.step), n)
        self.assertEqual(int(state.horizon), n)

    def test_later_resizes_follow_a_slowdown_to_the_end(self):
        calls = []
        deadline = time.time() + 60 * STEP_SECONDS

        def slows_down(state, step):  # From step 20 on, every step takes 3x as long.
            time.sleep(2 * STEP_SECONDS if step >= 20 else 0.0)
            return _step(state, step)

        resize = loop.Resize(at_step=6, end_fn=lambda per_step: deadline, every=6,
                             apply_fn=lambda state, n: state.replace(horizon=jnp.int32(n)),
                             record_fn=lambda step, n: calls.append((step, n)))
        workdir = self.create_tempdir().full_path
        manager = checkpoints.make_manager(workdir)
        writer = writer_lib.MetricWriter(workdir)
        try:
            state = loop.run(_State(jnp.int32(0), jnp.int32(200)),
                             schedule=loop.Schedule(200, 4, 100, 4), step_fn=slows_down,
                             loss_key="loss", manager=manager, writer=writer,
                             workdir=workdir, resize=resize)
        finally:
            writer.close()
        steps = [step for step, _ in calls]
        self.assertEqual(steps, sorted(steps))
        self.assertEqual(steps[0], 6)
        self.assertGreater(steps[-1], 20)  # Re-set after the slowdown, past checkpoints.
        self.assertLess(calls[-1][1], calls[0][1])
        self.assertEqual(int(state.step), calls[-1][1])
        # With the first re-set alone it would end ~28 slow steps (1.7 s) late.
        self.assertLess(time.time(), deadline + 12 * STEP_SECONDS)

    def test_recorded_resizes_replay_the_same_schedule_untimed(self):
        seen = {}

        def watch(state, step):
            seen.setdefault(len(seen), []).append(int(state.horizon))
            return _step(state, step)

        def run(state, num_steps, resize):
            seen.clear()
            workdir = self.create_tempdir().full_path
            manager = checkpoints.make_manager(workdir)
            writer = writer_lib.MetricWriter(workdir)
            try:
                return loop.run(state, schedule=loop.Schedule(num_steps, 4, 100, 100),
                                step_fn=lambda st, step: watch(st, step), loss_key="loss",
                                manager=manager, writer=writer, workdir=workdir,
                                resize=resize)
            finally:
                writer.close()

        calls = []
        state = run(_State(jnp.int32(0), jnp.int32(30)), 30,
                    self._resize(6, 0.0, calls, every=4,
                                 deadline=time.time() + 20 * STEP_SECONDS))
        records = tuple((at, n) for kind, *rest in calls if kind == "resize"
                        for n, at in [rest])
        self.assertNotEmpty(records)
        live = [h for hs in seen.values() for h in hs]
        replayed_calls = []
        again = run(_State(jnp.int32(0), jnp.int32(30)), 30,
                    self._resize(6, 0.0, replayed_calls, every=4, replay=records))
        self.assertEqual([h for hs in seen.values() for h in hs], live)
        self.assertEqual(replayed_calls, [])  # Nothing timed, nothing recorded again.
        self.assertEqual(int(again.step), int(state.step))
        # Resumed after the first record: only the later ones apply.
        first_at, first_n = records[0]
        resumed = run(_State(jnp.int32(first_at), jnp.int32(first_n)), first_n,
                      self._resize(6, 0.0, replayed_calls, every=4, replay=records))
        self.assertEqual(int(resumed.step), int(state.step))
        self.assertEqual(replayed_calls, [])

    def test_slow_first_steps_are_not_timed(self):
        calls = []
        workdir = self.create_tempdir().full_path

        def slow_start(state, step):  # The first 4 steps 10x slower, as after a compile.
            time.sleep(9 * STEP_SECONDS if step < 4 else 0.0)
            return _step(state, step)

        manager = checkpoints.make_manager(workdir)
        writer = writer_lib.MetricWriter(workdir)
        try:
            loop.run(_State(jnp.int32(0), jnp.int32(40)), schedule=loop.Schedule(40, 4, 100, 100),
                     step_fn=slow_start, loss_key="loss", manager=manager, writer=writer,
                     workdir=workdir, resize=self._resize(8, 0.0, calls))
        finally:
            writer.close()
        (_, per_step), _ = calls
        self.assertLess(per_step, 3 * STEP_SECONDS)  # Steps 5..8 only.

    def test_grows_a_phase_the_timed_calls_made_too_short(self):
        calls = []
        state = self._run(_State(jnp.int32(0), jnp.int32(8)), 8,
                          self._resize(6, 10 * STEP_SECONDS, calls))
        self.assertGreater(int(state.step), 8)
        self.assertEqual(int(state.step), calls[-1][1])

    def test_a_resume_without_records_keeps_its_length(self):
        calls = []
        state = self._run(_State(jnp.int32(4), jnp.int32(10)), 10,
                          self._resize(12, 0.0, calls), ckpt_every=4)
        self.assertEqual(calls, [])
        self.assertEqual(int(state.step), 10)

    def test_resized_steps(self):
        self.assertEqual(loop.resized_steps(12, 0.5, 10.0), 32)
        self.assertEqual(loop.resized_steps(12, 0.5, -3.0), 12)


if __name__ == "__main__":
    absltest.main()
