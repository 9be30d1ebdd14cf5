"""The CLIs' persistent compilation cache: which directory, how to turn it off, and that a
training run writes its compiled programs there."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from vdm_jax import _cli

REPO = pathlib.Path(__file__).parents[1]
_OPTIONS = (
  "jax_compilation_cache_dir",
  "jax_enable_compilation_cache",
  "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture
def env(monkeypatch, tmp_path):
  """A clean environment for the cache's variables; JAX's options restored afterwards."""
  saved = {name: getattr(jax.config, name) for name in _OPTIONS}
  for name in (
    _cli.CACHE_ENV,
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "XDG_CACHE_HOME",
  ):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  yield monkeypatch
  for name, value in saved.items():
    jax.config.update(name, value)


def _enabled(expected) -> None:
  assert jax.config.jax_compilation_cache_dir == str(expected)
  assert jax.config.jax_enable_compilation_cache
  assert os.path.isdir(expected)


def test_default_is_the_user_cache_directory(env, tmp_path):
  assert _cli.enable_compilation_cache() == str(tmp_path / "home" / ".cache" / "vdm_jax" / "jax")
  _enabled(tmp_path / "home" / ".cache" / "vdm_jax" / "jax")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
  env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  _cli.enable_compilation_cache()
  _enabled(tmp_path / "xdg" / "vdm_jax" / "jax")


def test_variables_in_order_of_precedence(env, tmp_path):
  env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_var"))
  env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # left to JAX
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  _cli.enable_compilation_cache()
  _enabled(tmp_path / "jax_var")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  env.setenv(_cli.CACHE_ENV, "~/ours")  # beats JAX's variable; ~ expanded
  _cli.enable_compilation_cache()
  _enabled(tmp_path / "home" / "ours")
  _cli.enable_compilation_cache(str(tmp_path / "given"))  # an explicit path beats both
  _enabled(tmp_path / "given")


@pytest.mark.parametrize("off", ["none", "OFF", "0", ""])
def test_turned_off(env, tmp_path, off):
  env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_var"))
  env.setenv(_cli.CACHE_ENV, off)
  assert _cli.enable_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None
  assert not jax.config.jax_enable_compilation_cache


def test_unusable_directory_warns_and_goes_on(env, tmp_path, capsys):
  (tmp_path / "file").write_text("")
  env.setenv(_cli.CACHE_ENV, str(tmp_path / "file" / "cache"))
  assert _cli.enable_compilation_cache() is None
  assert "warning: no compilation cache" in capsys.readouterr().err
  assert not jax.config.jax_enable_compilation_cache


@pytest.mark.slow  # two training processes / grain worker processes: a minute under load
def test_training_cli_writes_and_reuses_the_cache(tmp_path):
  cache = tmp_path / "cache"
  # JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 (conftest) makes every program cacheable,
  # and our variable beats the test suite's JAX_COMPILATION_CACHE_DIR.
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env[_cli.CACHE_ENV] = str(cache)

  def train(workdir):
    proc = subprocess.run(
      [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        f"--config={REPO / 'configs' / 'toy2d.py'}",  # an MLP: compiles faster than a U-Net
        f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.model.mlp_hidden=32",
        "--config.model.mlp_layers=1",
        "--config.train.num_steps=1",
        "--config.train.batch_size=32",
        "--config.eval.batch_size=256",
      ],
      capture_output=True,
      text=True,
      env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(p.name for p in cache.iterdir())

  first = train(tmp_path / "run1")
  assert any(name.startswith("jit_") for name in first), first
  assert train(tmp_path / "run2") == first  # a relaunch compiles nothing new
