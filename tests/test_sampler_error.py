"""`evaluation.sampler_error`: the energy distance against a brute-force NumPy sum, and the
table `render` prints."""

import numpy as np
import pytest

from vdm_jax.evaluation import sampler_error


def test_energy_distance_matches_numpy_over_all_pairs():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 2)), rng.normal(size=(4, 2)) + 0.5

  def mean_distance(a, b, same):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return d.sum() / (len(a) * (len(a) - 1) if same else d.size)

  expected = 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)
  np.testing.assert_allclose(
    sampler_error.energy_distance(x, y), expected, rtol=1e-5
  )  # float32 sums
  assert sampler_error.energy_distance(x, x) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match=r"got \(6, 2\), \(4, 3\)"):
    sampler_error.energy_distance(x, rng.normal(size=(4, 3)))


def test_render_has_a_cell_per_method_and_step_count():
  rows = [
    {"method": m, "num_steps": n, "energy": 1e-3 * (i + 1), "log_density": -float(i)}
    for i, (m, n) in enumerate([("ddim", 5), ("ddim", 50), ("ancestral", 5), ("ancestral", 50)])
  ]
  result = {
    "rows": rows,
    "floor": {"energy_mean": 2e-4, "energy_std": 1e-4, "log_density": 0.5, "log_density_se": 0.01},
    "num_samples": 100,
    "floor_pairs": 3,
    "digits_timing": [
      {"method": "dpm_solver", "num_steps": 20, "seconds": 1.5, "first_call_seconds": 9.25}
    ],
  }
  lines = sampler_error.render(result).splitlines()
  assert "| sampler | T=5 | T=50 |" in lines
  assert "| ddim | 1.000 | 2.000 |" in lines and "| ancestral | 3.000 | 4.000 |" in lines
  assert "| ddim | -0.000 | -1.000 |" in lines and "| ancestral | -2.000 | -3.000 |" in lines
  assert "exact vs exact: 0.200 +- 0.100 over 3 pairs" in lines[0]
  assert lines[-1] == (
    "digits, 64 samples, dpm_solver T=20: 1.50 s (first call, compile included: 9.25 s)"
  )
