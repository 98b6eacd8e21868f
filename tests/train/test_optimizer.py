"""The optimizer and LR schedule against hand-computed PyTorch-SGD updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.train import optimizer as opt


def _optim(**changes):
  c = opt.default_optim_config()
  c.warmup_steps = 3
  c.decay_steps = (5, 7)
  c.update(changes)
  return c


def test_schedule_constant_warmup_and_steps():
  sched = opt.lr_schedule(_optim(), global_batch_size=16)
  got = [float(sched(s)) for s in range(9)]
  want = [0.01 / 3] * 3 + [0.01] * 2 + [0.001] * 2 + [0.0001] * 2
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_schedule_linear_warmup_and_batch_scaling():
  sched = opt.lr_schedule(_optim(warmup_method="linear", warmup_factor=0.25),
                          global_batch_size=8)  # LR halves with the batch.
  base = 0.005
  want = [base * (0.25 * (1 - s / 3) + s / 3) for s in range(3)] + [base]
  np.testing.assert_allclose([float(sched(s)) for s in range(4)], want,
                             rtol=1e-6)


@pytest.mark.parametrize("method", ["constant", "linear"])
def test_schedule_equals_optax_combinators(method):
  import optax
  optim = _optim(warmup_method=method, warmup_steps=40, warmup_factor=0.1,
                 decay_steps=(70, 90))
  base = opt.scaled_base_lr(optim, 32)
  warm = (optax.linear_schedule(base * 0.1, base, 40) if method == "linear"
          else optax.constant_schedule(base * 0.1))
  steps = optax.piecewise_constant_schedule(base, {70 - 40: 0.1, 90 - 40: 0.1})
  want = jax.vmap(optax.join_schedules([warm, steps], [40]))(jnp.arange(120))
  got = jax.vmap(opt.lr_schedule(optim, 32))(jnp.arange(120))
  np.testing.assert_allclose(got, want, rtol=5e-7)  # a few float32 ulps


def test_schedule_rejects_unknown_warmup():
  with pytest.raises(ValueError, match="warmup_method"):
    opt.lr_schedule(_optim(warmup_method="cosine"), 16)


def test_groups_match_pytorch_sgd_by_hand():
  """Each group: g += wd*p; v = mu*v + g; p -= lr*factor*v."""
  optim = _optim(weight_decay=0.1, weight_decay_norm=0.05,
                 weight_decay_bias=0.0, bias_lr_factor=2.0)
  params = {"w": jnp.array([1.0, -2.0]), "n": jnp.array([0.5]),
            "b": jnp.array([3.0]), "f": jnp.array([7.0])}
  labels = {"w": "weight", "n": "norm", "b": "bias", "f": "frozen"}
  tx = opt.make_optimizer(optim, 16, labels)
  state = tx.init(params)
  # Frozen parameters keep no optimizer state.
  sizes = sum(x.size for x in jax.tree.leaves(state))
  assert sizes <= 4 + 3 * 1 + 3  # momentum of w, n, b plus step counters.

  sched = opt.lr_schedule(optim, 16)
  ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in ref.items()}
  wd = {"w": 0.1, "n": 0.05, "b": 0.0}
  factor = {"w": 1.0, "n": 1.0, "b": 2.0}
  p = params
  rng = np.random.default_rng(0)
  for step in range(6):
    grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32)
             for k, v in params.items()}
    updates, state = tx.update(grads, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
    lr = float(sched(step))
    for k in ("w", "n", "b"):
      g = np.asarray(grads[k], np.float64) + wd[k] * ref[k]
      mom[k] = 0.9 * mom[k] + g
      ref[k] = ref[k] - lr * factor[k] * mom[k]
  for k in ("w", "n", "b"):
    np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(p["f"]), [7.0])


def test_gradient_clipping_by_global_norm():
  optim = _optim(grad_clip_norm=1.0, weight_decay=0.0, warmup_steps=0)
  params = {"w": jnp.zeros(2)}
  tx = opt.make_optimizer(optim, 16, {"w": "weight"})
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]),
                             -0.01 * np.array([0.6, 0.8]), rtol=1e-6)
