"""The certification of the ELBO with a Bayes-optimal denoiser, at small size."""

import jax
import numpy as np

from vdm_jax import schedules, testing
from vdm_jax.data import toy2d
from vdm_jax.evaluation import certify


def test_gap_shrinks_with_T_and_vanishes_in_continuous_time():
  data = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  rows = certify.certify(
    jax.random.key(0),
    data,
    toy2d.sample(128, 3),
    schedules.LinearSchedule(-13.3, 13.3),
    steps=(4, 16, 64, 256),
    num_samples=4,
    continuous_samples=256,
  )
  discrete, cont = rows[:-1], rows[-1]
  assert [r["T"] for r in rows] == [4, 16, 64, 256, 0]
  gaps = np.array([r["gap"] for r in discrete])
  assert np.all(np.diff(gaps) < 0), gaps
  assert all(r["gap"] > 3 * r["gap_se"] for r in discrete), discrete
  assert abs(cont["gap"]) < 4 * cont["gap_se"] + 0.02, cont
  assert cont["gap_se"] < 0.1
  for r in rows:
    np.testing.assert_allclose(r["elbo"], r["recon"] + r["prior"] + r["diffusion"], rtol=1e-9)
