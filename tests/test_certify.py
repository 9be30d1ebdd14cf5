"""The certification of the ELBO with a Bayes-optimal denoiser, at small size."""

import jax
import numpy as np
import pytest

from vdm_jax import schedules, testing
from vdm_jax.data import toy2d
from vdm_jax.evaluation import certify


@pytest.fixture(scope="module")
def rows():
  data = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  return certify.certify(
    jax.random.key(0),
    data,
    toy2d.sample(128, 3),
    schedules.LinearSchedule(-13.3, 13.3),
    steps=(4, 16, 64, 256),
    num_samples=4,
    continuous_samples=256,
  )


def test_gap_shrinks_with_T_and_vanishes_in_continuous_time(rows):
  discrete, cont = rows[:-1], rows[-1]
  assert [r["T"] for r in rows] == [4, 16, 64, 256, 0]
  gaps = np.array([r["gap"] for r in discrete])
  assert np.all(np.diff(gaps) < 0), gaps
  assert all(r["gap"] > 3 * r["gap_se"] for r in discrete), discrete
  assert abs(cont["gap"]) < 4 * cont["gap_se"] + 0.02, cont
  assert cont["gap_se"] < 0.1
  for r in rows:
    np.testing.assert_allclose(r["elbo"], r["recon"] + r["prior"] + r["diffusion"], rtol=1e-9)


def test_render_and_plot(rows, tmp_path):
  result = {"schedule": "linear", "num_examples": 128, "rows": rows}
  lines = certify.render(result).splitlines()
  assert lines[0].endswith(f"exact -log p(x) = {rows[0]['nll']:.4f}")
  for line, r in zip(lines[2:], rows, strict=True):
    assert line.split() == [
      "cont." if r["T"] == 0 else str(r["T"]),
      f"{r['elbo']:.4f}",
      f"{r['gap']:.4f}",
      f"{r['gap_se']:.4f}",
    ]
  certify.save_plot(result, str(tmp_path / "gap.png"))
  assert (tmp_path / "gap.png").read_bytes()[:4] == b"\x89PNG"


def test_toy2d_certificate_refuses_an_unknown_schedule():
  with pytest.raises(ValueError, match="Unknown schedule 'ddpm'"):
    certify.certify_toy2d(schedule="ddpm")


@pytest.mark.slow  # about 10 s on 2 CPU cores: three programs compiled
def test_toy2d_certificate_is_certify_on_toy2d_points():
  result = certify.certify_toy2d(num_examples=16, num_samples=2, max_log2_steps=1, seed=1)
  assert result["num_examples"] == 16
  assert result["schedule"] == repr(schedules.LinearSchedule(-13.3, 13.3))
  data = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  expected = certify.certify(
    jax.random.key(1),
    data,
    toy2d.sample(16, 1),
    schedules.LinearSchedule(-13.3, 13.3),
    steps=(1, 2),
    num_samples=2,
  )
  assert result["rows"] == expected
