"""Class-conditional VDM on the 8x8 digits: configs/digits.py plus a label embedding.

  python scripts/train.py --config=configs/digits_cond.py --workdir=runs/digits_cond
  python scripts/evaluate.py --workdir=runs/digits_cond --classify
  python scripts/sample.py --workdir=runs/digits_cond --method=dpm_solver --num_steps=20 \
      --label=3 --guidance=2

Each training example's label is replaced by the learned null label with probability
model.label_dropout (0.1), so the same network is the unconditional model that classifier-
free guidance and the marginal bound need.
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "digits.py")
  c.model.conditional = True
  return c
