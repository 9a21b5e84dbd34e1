"""A grid keeps one local Ray across its cells (fedisguise.experiment.ray_kept_between_runs):
Flower's per-run shutdown is skipped inside, a run with other Ray settings or a failed run
gets a fresh Ray, and outside the block every run starts and ends its own, as before."""

import pytest
import ray

from fedisguise import experiment

LOCAL = {"address": "local", "num_cpus": 2}


class FakeRay:
    def __init__(self):
        self.up, self.inits, self.shutdowns = False, [], 0

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        assert not self.up, "ray.init on a running Ray"
        self.up = True
        self.inits.append(kwargs)

    def shutdown(self, *args, **kwargs):
        self.up = False
        self.shutdowns += 1


@pytest.fixture
def fake(monkeypatch):
    fake = FakeRay()
    for name in ("is_initialized", "init", "shutdown"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    return fake


def flower_run(args=LOCAL, plugins=(), fail=False):
    """What experiment.run_simulation does around Flower's run: start Ray, run, and Flower's
    backend calling ray.shutdown() at its end."""
    experiment.start_ray(dict(args), list(plugins))
    with experiment._flower_keeps_ray(experiment._kept_ray is not None):
        if fail:
            raise RuntimeError("a cell failed")
        ray.shutdown()  # raybackend.terminate


def test_outside_a_grid_every_run_starts_and_ends_its_own_ray(fake):
    flower_run()
    flower_run()
    assert len(fake.inits) == 2 and fake.shutdowns == 2 and not fake.up


def test_a_grid_starts_ray_once_and_ends_it_after_its_last_run(fake):
    with experiment.ray_kept_between_runs():
        for _ in range(3):
            flower_run()
            assert fake.up  # Flower's shutdown was skipped
    assert len(fake.inits) == 1 and fake.shutdowns == 1 and not fake.up
    assert ray.shutdown == fake.shutdown  # put back


def test_other_ray_settings_or_plugins_get_a_fresh_ray(fake):
    with experiment.ray_kept_between_runs():
        flower_run()
        flower_run({"address": "local", "num_cpus": 2, "num_gpus": 1})
        flower_run({"address": "local", "num_cpus": 2, "num_gpus": 1}, plugins=["p.py"])
        flower_run({"address": "local", "num_cpus": 2, "num_gpus": 1}, plugins=["p.py"])
    assert len(fake.inits) == 3 and fake.shutdowns == 3


def test_a_failed_run_ends_the_kept_ray_and_the_next_starts_a_clean_one(fake):
    with experiment.ray_kept_between_runs():
        flower_run()
        with pytest.raises(RuntimeError, match="a cell failed"):
            flower_run(fail=True)
        assert not fake.up and fake.shutdowns == 1
        flower_run()
        assert fake.up
    assert len(fake.inits) == 2 and fake.shutdowns == 2 and experiment._kept_ray is None


def test_an_interrupted_grid_still_ends_its_ray(fake):
    with pytest.raises(KeyboardInterrupt), experiment.ray_kept_between_runs():
        flower_run()
        raise KeyboardInterrupt
    assert not fake.up and experiment._kept_ray is None
