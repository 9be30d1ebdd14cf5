"""The analytic FLOPs of the U-Net against XLA's own count of the compiled forward pass.

XLA's CPU cost analysis counts convolutions tap by tap inside the image (no padding taps:
`count_padding=False`), dense layers and attention matmuls, and also the elementwise work
the formula leaves out (GroupNorm, swish, softmax, biases, residual adds), so its figure
is a little higher: measured with jax 0.10.2, +1.40% to +1.48% for these configurations
at n_embd=64 (+2.9% to +3.4% at n_embd=32). The tolerance, 2.5%, is below what forgetting
the up blocks' 2E input channels (+16% or more) or the attention matmuls (+3.4% and +30%
here) would give; the test checks that too.
"""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from vdm_jax.config import base_config, sibling_config
from vdm_jax.models import UNet
from vdm_jax.models import flops as flops_lib

REPO = pathlib.Path(__file__).parents[1]
TOL = 0.025

# height, width, channels, n_layer, fourier_features, vocab_size, attention_everywhere, batch
CASES = {
  "plain": (8, 8, 1, 1, False, 17, False, 2),
  "fourier_attention_everywhere": (16, 16, 3, 2, True, 256, True, 2),
  "fourier_deep_nonsquare": (6, 4, 2, 3, True, 17, False, 3),
}
E = 64  # n_embd: elementwise work is O(N E) against O(N E^2) for the convolutions


def _xla_flops(h, w, c, n_layer, fourier, vocab, everywhere, b):
  net = UNet(
    n_layer=n_layer,
    n_embd=E,
    norm_groups=8,
    fourier_features=fourier,
    attention_everywhere=everywhere,
    vocab_size=vocab,
  )
  z, gamma = jnp.zeros((b, h, w, c)), jnp.zeros((b,))
  params = jax.eval_shape(lambda: net.init(jax.random.key(0), z, gamma))
  compiled = jax.jit(lambda p, z, g: net.apply(p, z, g)).lower(params, z, gamma).compile()
  cost = compiled.cost_analysis()  # a dict in jax 0.10 (a list of one dict in older ones)
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("case", CASES)
def test_forward_flops_match_xla_cost_analysis(case):
  h, w, c, n_layer, fourier, vocab, everywhere, b = CASES[case]
  xla = _xla_flops(h, w, c, n_layer, fourier, vocab, everywhere, b)
  kwargs = dict(
    height=h,
    width=w,
    channels=c,
    n_layer=n_layer,
    n_embd=E,
    fourier_features=fourier,
    vocab_size=vocab,
    attention_everywhere=everywhere,
    batch=b,
  )
  analytic = flops_lib.unet_flops(**kwargs, count_padding=False)
  gap = xla / analytic - 1
  assert 0 <= gap < TOL, (case, xla, analytic, gap)

  # The tolerance would catch the likely mistakes: up blocks read E channels (conv0 E -> E
  # and no 1x1 skip Dense) instead of the concatenated 2E; attention without its two
  # L x L matmuls (significant where L = H W is not small against E).
  windows = b * (3 * h - 2) * (3 * w - 2)
  up_doubling = (n_layer + 1) * (2 * windows * E * E + 2 * (b * h * w) * 2 * E * E)
  assert xla / (analytic - up_doubling) - 1 > TOL
  if h * w >= 64:
    attention_blocks = 1 + (2 * n_layer + 1) * everywhere
    matmuls = attention_blocks * 2 * (2 * b * (h * w) ** 2 * E)
    assert xla / (analytic - matmuls) - 1 > TOL

  # The default charges every output the full 3x3 window: more than XLA counts.
  padded = flops_lib.unet_flops(**kwargs)
  assert padded > xla and flops_lib.train_step_flops(**kwargs) == 3 * padded


def test_breakdown_sums_and_from_config():
  c = sibling_config(str(REPO / "configs" / "cifar10.py"), "cifar10.py")  # the paper's model
  parts = flops_lib.unet_flops_breakdown(
    height=32,
    width=32,
    channels=3,
    n_layer=32,
    n_embd=128,
    fourier_features=True,
    vocab_size=256,
    attention_everywhere=False,
    batch=128,
  )
  assert flops_lib.unet_flops_from_config(c, (32, 32, 3)) == sum(parts.values())
  assert flops_lib.unet_flops_from_config(c, (32, 32, 3), 128, train=True) == 3 * sum(
    parts.values()
  )
  # Per ResNet block E -> E: two 3x3 convolutions and the conditioning Dense.
  per_block = 2 * (2 * 128 * 1024 * 9 * 128 * 128) + 2 * 128 * 512 * 128
  assert parts["down"] == 32 * per_block

  class Info:  # a data.DatasetInfo's two fields that matter
    shape, vocab_size = (8, 8, 1), 17

  d = base_config()
  assert flops_lib.unet_flops_from_config(d, Info, 1) == flops_lib.unet_flops(
    height=8,
    width=8,
    channels=1,
    n_layer=d.model.n_layer,
    n_embd=d.model.n_embd,
    fourier_features=True,
    vocab_size=17,
    attention_everywhere=False,
    batch=1,
  )
  d.model.denoiser = "mlp"
  with pytest.raises(ValueError, match="denoiser"):
    flops_lib.unet_flops_from_config(d, Info, 1)
  with pytest.raises(ValueError, match="n_embd must be a positive int, got 0"):
    flops_lib.unet_flops(
      height=8,
      width=8,
      channels=1,
      n_layer=1,
      n_embd=0,
      fourier_features=False,
      vocab_size=17,
      attention_everywhere=False,
      batch=1,
    )
