"""`ngvi.save` / `ngvi.load`: round trips of every model kind, and one-line errors for files
that are truncated, corrupted, of another format or version, or need what is not given."""

import hashlib
import json
import os
import stat

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tutorial_model

import ngvi
from ngvi.serialisation import read_metadata


def _assert_same_result(loaded, result, X_new=None):
    assert type(loaded.model) is type(result.model) and type(loaded.q) is type(result.q)
    assert bool(eqx.tree_equal(loaded, result))  # every array bitwise, every static field
    assert loaded.outcome == result.outcome and loaded.num_steps == result.num_steps
    if X_new is not None:
        want = ngvi.predict(result.model, result.q, X_new)
        got = ngvi.predict(loaded.model, loaded.q, X_new)
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.latent_variance, want.latent_variance)


@pytest.fixture(scope="module")
def dense_result():
    learn = ngvi.LearnHyperparameters(optax.adam(0.05))
    return ngvi.fit(tutorial_model(), ngvi.NaturalGradient(), 15, learn=learn, progress=False)


def test_dense_round_trip_with_learned_hyperparameters(tmp_path, dense_result):
    path = tmp_path / "model.ngvi"
    ngvi.save(path, dense_result)
    loaded = ngvi.load(path)
    _assert_same_result(loaded, dense_result, jnp.linspace(-3.0, 3.0, 7))
    # The learned kernel came back, not the one the model started with.
    assert float(loaded.model.prior.kernel.variance) != 1.5
    header = json.loads(path.read_bytes().split(b"\n")[1])
    assert header["format"] == "fit-result" and header["version"] == 2
    assert header["model"] == "ngvi.models.dense:Model" and header["dtype"] == "float64"
    assert "ngvi.kernels:SquaredExponential" in header["classes"]
    assert {"shape": [1, 30], "dtype": "float64"} in header["arrays"]  # the sites (C, N)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_sparse_round_trip(tmp_path):
    X, y = ngvi.datasets.banana()
    kernel = ngvi.kernels.Matern32(variance=1.0, lengthscale=jnp.ones(2))
    model = ngvi.SparseModel(
        ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X[:80], y[:80], inducing=6
    )
    result = ngvi.fit(model, ngvi.NaturalGradient(), 5, batch_size=16, progress=False)
    ngvi.save(tmp_path / "sparse.ngvi", result, metadata={"note": "banana"})
    loaded = ngvi.load(tmp_path / "sparse.ngvi")
    _assert_same_result(loaded, result, X[80:90])
    assert read_metadata(tmp_path / "sparse.ngvi") == {"note": "banana"}


def log_likelihood(w):  # a module-level function: saved by name only
    X = jnp.linspace(-1.0, 1.0, 20)[:, None] * jnp.asarray([[1.0, -0.5]])
    return jnp.sum(jax.nn.log_sigmoid(jnp.sign(X[:, 0]) * (X @ w)))


def test_parametric_model_needs_its_function_back(tmp_path):
    model = ngvi.ParametricModel(ngvi.GaussianPrior(jnp.zeros(2), jnp.eye(2)), log_likelihood)
    result = ngvi.fit(model, ngvi.BLR(lr=0.2, num_samples=4), 3, progress=False)
    path = tmp_path / "parametric.ngvi"
    ngvi.save(path, result)
    with pytest.raises(ngvi.LoadError, match=r"function 'log_likelihood'.*functions=\["):
        ngvi.load(path)
    loaded = ngvi.load(path, functions=[log_likelihood])
    assert loaded.model.log_likelihood is log_likelihood
    _assert_same_result(loaded, result)


class Laplace(ngvi.likelihoods.AbstractLikelihood):
    log_scale: jax.Array = ngvi.learnable(default_factory=lambda: jnp.asarray(0.0))

    def log_prob(self, f, y):
        return -jnp.abs(y - f) * jnp.exp(-self.log_scale) - self.log_scale - jnp.log(2.0)


def test_user_classes_are_rebuilt_only_when_given(tmp_path):
    X = jnp.linspace(-2.0, 2.0, 12)
    model = ngvi.Model(ngvi.GPPrior(ngvi.kernels.SquaredExponential()), Laplace(), X, jnp.sin(X))
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), 3, progress=False)
    ngvi.save(tmp_path / "laplace.ngvi", result)
    with pytest.raises(ngvi.LoadError, match=r"class '.*Laplace'.*classes=\[Laplace\]"):
        ngvi.load(tmp_path / "laplace.ngvi")
    _assert_same_result(ngvi.load(tmp_path / "laplace.ngvi", classes=[Laplace]), result, X)


def _damage(data: bytes, how: str) -> bytes:
    header_end = data.index(b"\n", 5)
    if how == "truncated":
        return data[: len(data) - 40]
    if how == "truncated header":
        return data[: header_end - 10]
    if how == "corrupted":
        flipped = data[-20] ^ 0xFF
        return data[:-20] + bytes([flipped]) + data[-19:]
    if how == "corrupted header":
        return data[:30] + b"}{" + data[32:]
    if how == "not ngvi":
        return b"\x80\x04" + data
    if how == "flipped bit in header":  # the kernel variance's array index 10 -> 11
        line = data[5:header_end]
        at = line.index(b'"log_variance":{') + len(b'"log_variance":{')
        at = line.index(b'"array":', at) + len(b'"array":')
        digit = line[at : at + 2]
        assert digit.isdigit()
        line = line[:at] + bytes([digit[0], digit[1] ^ 1]) + line[at + 2 :]
        return data[:5] + line + data[header_end:]
    if how == "newer version":
        header = json.loads(data[5:header_end])
        header["version"] = 99
        return data[:5] + _signed(header) + data[header_end:]
    if how == "other format":
        header = json.loads(data[5:header_end])
        header["format"] = "checkpoint"
        return data[:5] + _signed(header) + data[header_end:]
    raise AssertionError(how)


def test_a_version_1_file_without_a_header_checksum_still_loads(tmp_path, dense_result):
    path = tmp_path / "model.ngvi"
    ngvi.save(path, dense_result)
    data = path.read_bytes()
    header_end = data.index(b"\n", 5)
    header = json.loads(data[5:header_end])
    header.pop("header_sha256")
    header["version"] = 1
    path.write_bytes(data[:5] + json.dumps(header).encode() + data[header_end:])
    _assert_same_result(ngvi.load(path), dense_result, jnp.linspace(-3.0, 3.0, 7))


def _signed(header: dict) -> bytes:
    """The header line as the format documents it: JSON, then as its last field the SHA-256
    of the line's bytes up to that field (closed by `}`)."""
    header.pop("header_sha256")
    line = json.dumps(header, separators=(",", ":")).encode()
    return line[:-1] + b',"header_sha256":"' + hashlib.sha256(line).hexdigest().encode() + b'"}'


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("truncated", "truncated"),
        ("truncated header", "truncated"),
        ("corrupted", "corrupted"),
        ("corrupted header", "header is corrupted"),
        ("flipped bit in header", "header does not match its checksum"),
        ("not ngvi", "not an ngvi file"),
        ("newer version", "version 99"),
        ("other format", "'checkpoint' file"),
    ],
)
def test_damaged_files_give_one_line(tmp_path, dense_result, how, fragment):
    path = tmp_path / "model.ngvi"
    ngvi.save(path, dense_result)
    path.write_bytes(_damage(path.read_bytes(), how))
    with pytest.raises(ngvi.LoadError) as info:
        ngvi.load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert str(path) in message and fragment in message, message


def test_missing_file_and_float64_in_32_bit_mode(tmp_path, dense_result):
    with pytest.raises(ngvi.LoadError, match="absent.ngvi"):
        ngvi.load(tmp_path / "absent.ngvi")
    ngvi.save(tmp_path / "model.ngvi", dense_result)
    with jax.enable_x64(False):
        with pytest.raises(ngvi.LoadError, match="float64 arrays but JAX runs in 32-bit"):
            ngvi.load(tmp_path / "model.ngvi")


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, dense_result, monkeypatch):
    import ngvi.serialisation.container as container

    path = tmp_path / "model.ngvi"
    ngvi.save(path, dense_result)
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(container.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ngvi.save(path, eqx.tree_at(lambda r: r.elbo, dense_result, jnp.asarray(0.0)))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ngvi"]


def test_refuses_what_it_cannot_save(tmp_path, dense_result):
    with pytest.raises(TypeError, match="FitResult"):
        ngvi.save(tmp_path / "x.ngvi", dense_result.q)
    odd = eqx.tree_at(lambda r: r.model.likelihood, dense_result, object(), is_leaf=None)
    with pytest.raises(ValueError, match="cannot save result.model.likelihood"):
        ngvi.save(tmp_path / "x.ngvi", odd)


def test_save_names_the_target_and_the_metadata_it_cannot_keep(tmp_path, dense_result):
    """Reproducers: a missing folder and a folder as the target failed naming the temporary
    file (`'.x.ngvi.h0hghyv3.tmp'`); a NumPy scalar in `metadata` raised json's TypeError
    after the work, and a key `1` came back as `'1'`."""
    missing = tmp_path / "missing" / "x.ngvi"
    with pytest.raises(ValueError, match=r"x\.ngvi.*folder .*missing.* does not exist"):
        ngvi.save(missing, dense_result)
    with pytest.raises(ValueError, match="it is a folder"):
        ngvi.save(tmp_path, dense_result)
    path = tmp_path / "x.ngvi"
    with pytest.raises(ValueError, match=r"metadata\['s'\].*plain Python"):
        ngvi.save(path, dense_result, metadata={"s": np.float32(2)})
    with pytest.raises(ValueError, match="keys must be strings"):
        ngvi.save(path, dense_result, metadata={1: (1, 2)})
    assert not path.exists() and not list(tmp_path.glob(".*tmp"))


def test_saved_files_get_the_umask_mode_or_keep_their_own(tmp_path, dense_result):
    """Reproducer (adversarial probe): files were written through `mkstemp`, so every saved
    model and every replaced `ngvi predict` output came out `0600`, unreadable to the group
    and others whatever the umask."""
    previous = os.umask(0o022)
    try:
        path = tmp_path / "model.ngvi"
        ngvi.save(path, dense_result)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        ngvi.save(path, dense_result)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(previous)
