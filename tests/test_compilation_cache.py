"""The persistent compilation cache ngvi turns on when asked (off by default), in fresh
processes."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import jax, ngvi
jax.config.update("jax_enable_x64", True)
X, y = ngvi.datasets.tutorial()
model = ngvi.Model(ngvi.GPPrior(ngvi.kernels.SquaredExponential()), ngvi.likelihoods.Probit(), X, y)
ngvi.fit(model, ngvi.NaturalGradient(), 5, progress=False)
print("DIR", jax.config.jax_compilation_cache_dir)
"""


def _run(env_changes: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGVI_", "JAX_COMP"))}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(ln for ln in done.stdout.splitlines() if ln.startswith("DIR"))[4:]


@pytest.mark.slow
def test_opting_in_caches_fits_in_the_ngvi_cache_directory(tmp_path):
    directory = tmp_path / "cache"
    env = {"NGVI_CACHE_DIR": str(directory), "NGVI_COMPILATION_CACHE": "1"}
    assert _run(env) == str(directory)
    assert any(directory.iterdir())  # the compiled fit loop was written there


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_the_cache_is_off_by_default_and_a_users_own_is_kept(tmp_path):
    assert _run({"NGVI_CACHE_DIR": str(tmp_path / "a")}) == "None"
    assert not (tmp_path / "a").exists()
    own = str(tmp_path / "mine")
    env = {"NGVI_CACHE_DIR": str(tmp_path / "b"), "NGVI_COMPILATION_CACHE": "1"}
    assert _run({**env, "JAX_COMPILATION_CACHE_DIR": own}) == own
    assert not (tmp_path / "b").exists()
