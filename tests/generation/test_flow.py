"""Flow matching pieces: times, interpolant and the two samplers on a problem with a known answer."""

import pytest
import torch

from mmtok.nn.flow import euler_maruyama_sample, euler_sample, interpolate, logit_normal_times, time_grid


def _point_mass_velocity(x0):
    # Data = a single point x0: x_t = (1 - t) x0 + t eps, so eps = (x - (1 - t) x0) / t and
    # v = eps - x0 = (x - x0) / t exactly.
    return lambda x, t: (x - x0) / max(t, 1e-8)


def test_time_grid_and_interpolant():
    assert time_grid(4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert time_grid(2, t_min=0.5) == pytest.approx([1.0, 0.75, 0.5])
    x0, eps = torch.zeros(3), torch.ones(3)
    assert torch.equal(interpolate(x0, eps, torch.tensor(0.0)), x0)
    assert torch.equal(interpolate(x0, eps, torch.tensor(1.0)), eps)
    with pytest.raises(ValueError):
        time_grid(0)


def test_logit_normal_times_are_in_the_open_interval_and_seeded():
    g = lambda: torch.Generator().manual_seed(3)
    t = logit_normal_times((10000,), generator=g())
    assert 0 < t.min() and t.max() < 1 and abs(float(t.median()) - 0.5) < 0.02
    assert torch.equal(t, logit_normal_times((10000,), generator=g()))
    assert logit_normal_times((10000,), mean=1.0, generator=g()).median() > 0.7


@pytest.mark.parametrize("sampler", [euler_sample, euler_maruyama_sample])
def test_samplers_reach_the_data_point(sampler):
    x0 = torch.tensor([2.0, -1.0, 0.5])
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    kw = {"generator": torch.Generator().manual_seed(1)} if sampler is euler_maruyama_sample else {}
    out = sampler(_point_mass_velocity(x0), noise, 10, **kw)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-4)


def test_euler_maruyama_on_a_gaussian_keeps_its_spread():
    # Data N(0, s^2): the exact velocity is known in closed form; SDE samples must have std ~ s.
    s = 0.5

    def v(x, t):
        var = (1 - t) ** 2 * s**2 + t**2
        x0_hat = (1 - t) * s**2 / var * x  # E[x0 | x_t]
        eps_hat = t / var * x
        return eps_hat - x0_hat

    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    sde = euler_maruyama_sample(v, noise, 50, generator=torch.Generator().manual_seed(1))
    ode = euler_sample(v, noise, 50)
    assert abs(float(sde.std()) - s) < 0.02 and abs(float(ode.std()) - s) < 0.02
    assert abs(float(sde.mean())) < 0.02
