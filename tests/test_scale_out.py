"""Scale-out: the sparse fit on data sharded over (emulated) devices and processes, and a fit
streamed from a memory map. Each sharded fit is compared with the same fit on one device."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngvi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A banana subset, a fixed Z and fixed hyperparameters, shared by every script below.
PROBLEM = """
import numpy as np
import ngvi
X, y = ngvi.datasets.banana_large()
X, y = np.asarray(X)[:2000], np.asarray(y)[:2000]
Z = X[:32]
def make(X, y, chunk_size=4096):
    kernel = ngvi.kernels.SquaredExponential(variance=2.0, lengthscale=0.6)
    return ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y,
                            inducing=Z, chunk_size=chunk_size)
FIT = dict(progress=False, tol=0.0)
"""

SHARDED = (
    """
import os, json, sys
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
"""
    + PROBLEM
    + """
import importlib
fit_module = importlib.import_module("ngvi.fitting.fit")
from ngvi.fitting.loop import run_chunk
mesh = jax.make_mesh((4,), ("data",))
rows = NamedSharding(mesh, P("data"))
one, four = make(X, y, chunk_size=300), make(jax.device_put(X, rows), jax.device_put(y, rows), 300)
out = {"devices": jax.device_count(), "sharded": str(four.data.X.sharding.spec)}
full = [ngvi.fit(m, ngvi.NaturalGradient(lr=1.0), 10, **FIT) for m in (one, four)]
out["full"] = [float(r.elbo) for r in full]
adam = [ngvi.fit(m, ngvi.Adam(lr=0.05), 10, **FIT) for m in (one, four)]
out["adam"] = [float(r.elbo) for r in adam]
key = jax.random.PRNGKey(3)
out["prediction"] = [
    [float(p) for p in ngvi.predict(m, r.q, X[:5]).mean] for m, r in zip((one, four), full)
]
if "minibatch" in sys.argv[1:]:  # the slow tier's part
    mini = [ngvi.fit(m, ngvi.NaturalGradient(), 25, batch_size=200, key=key, **FIT)
            for m in (one, four)]
    out["minibatch"] = [[float(e) for e in r.history.elbo] for r in mini]
    learn = ngvi.LearnHyperparameters()
    learned = [ngvi.fit(m, ngvi.NaturalGradient(), 5, batch_size=200, key=key, learn=learn,
                        **FIT) for m in (one, four)]
    out["learned"] = [float(r.elbo) for r in learned]
collectives = {}
for name, batch_size in (("full", None), ("minibatch", 200)):
    strategy = ngvi.NaturalGradient()
    q, state = strategy.init(four, four.init_variational(strategy.form))
    loop, carry = fit_module._start(four, strategy, q, state, 10, key, batch_size, None, None)
    lowered = run_chunk.lower(loop, carry, jnp.asarray(10), jnp.asarray(0.0))
    text = lowered.compile().compiled.as_text()
    collectives[name] = {op: op in text for op in ("all-reduce", "all-gather", "all-to-all")}
out["collectives"] = collectives
errors = {}
try:
    ngvi.fit(four, ngvi.NaturalGradient(), 2, batch_size=202, **FIT)
except ValueError as error:
    errors["batch"] = str(error)
try:
    ngvi.Model(ngvi.GPPrior(ngvi.kernels.SquaredExponential()), ngvi.likelihoods.Probit(),
               jax.device_put(X, rows), jax.device_put(y, rows))
except ValueError as error:
    errors["dense"] = str(error)
bad = y.copy(); bad[1777] = 3.0
try:
    make(jax.device_put(X, rows), jax.device_put(bad, rows))
except ValueError as error:
    errors["labels"] = str(error)
out["errors"] = errors
print("RESULT" + json.dumps(out))
"""
)

WORKER = (
    """
import os, sys, json
process_id, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
from jax.sharding import NamedSharding, PartitionSpec as P
"""
    + PROBLEM
    + """
mesh = jax.make_mesh((jax.device_count(),), ("data",))
rows = NamedSharding(mesh, P("data"))
mine = np.array_split(np.arange(len(y)), 2)[process_id]  # this process's rows only
model = make(jax.make_array_from_process_local_data(rows, X[mine]),
             jax.make_array_from_process_local_data(rows, y[mine]))
r = ngvi.fit(model, ngvi.NaturalGradient(), 15, batch_size=200,
             key=jax.random.PRNGKey(1), **FIT)
if process_id == 0:
    with open(path, "w") as f:
        json.dump({"devices": jax.device_count(), "elbo": [float(e) for e in r.history.elbo],
                   "final": float(r.elbo)}, f)
"""
)


def _python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _problem():
    namespace: dict = {}
    exec(PROBLEM, namespace)
    return namespace


def _sharded_run(*parts: str) -> dict:
    completed = _python(SHARDED, *parts)
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def sharded():
    """Full-batch fits, predictions, the compiled steps' collectives and the errors (~30 s)."""
    return _sharded_run()


@pytest.fixture(scope="module")
def sharded_minibatches():
    """The same script with minibatch and hyperparameter-learning fits added (~60 s)."""
    return _sharded_run("minibatch")


def test_the_data_is_spread_over_four_devices(sharded):
    assert sharded["devices"] == 4 and "data" in sharded["sharded"]


def test_full_batch_fit_on_sharded_data_equals_one_device(sharded):
    one, four = sharded["full"]
    assert abs(four - one) <= 1e-9 * abs(one)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_minibatch_trajectory_on_sharded_data_equals_one_device(sharded_minibatches):
    one, four = (np.asarray(e) for e in sharded_minibatches["minibatch"])
    assert one.shape == four.shape == (25,)
    np.testing.assert_allclose(four, one, rtol=1e-9)
    assert np.ptp(one) > 1.0  # the trajectory moves, so agreeing along it means something


def test_adam_on_sharded_data_equals_one_device(sharded):
    # Reproducer: Adam failed inside `shard_map` (`jnp.tril`'s mask, a mesh mismatch).
    one, four = sharded["adam"]
    assert abs(four - one) <= 1e-9 * abs(one)


def test_predicting_on_sharded_data_equals_one_device(sharded):
    np.testing.assert_allclose(*sharded["prediction"], rtol=1e-9)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_learning_on_sharded_data_equals_one_device(sharded_minibatches):
    one, four = sharded_minibatches["learned"]
    assert abs(four - one) <= 1e-9 * abs(one)


def test_compiled_steps_all_reduce_and_never_gather_the_data(sharded):
    for name in ("full", "minibatch"):
        ops = sharded["collectives"][name]
        assert ops["all-reduce"], name
        assert not ops["all-gather"] and not ops["all-to-all"], (name, ops)


def test_sharded_data_errors_name_the_problem(sharded):
    errors = sharded["errors"]
    assert "multiple of the 4 devices" in errors["batch"]
    assert "SparseModel" in errors["dense"]
    assert "rows 1500:2000" in errors["labels"] and "3" in errors["labels"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_two_processes_fit_equals_one_process(tmp_path):
    port, path = str(_free_port()), str(tmp_path / "result.json")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), port, path],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-4000:]
    with open(path) as f:
        distributed = json.load(f)
    assert distributed["devices"] == 4
    p = _problem()
    single = ngvi.fit(
        p["make"](p["X"], p["y"]),
        ngvi.NaturalGradient(),
        15,
        batch_size=200,
        key=jax.random.PRNGKey(1),
        **p["FIT"],
    )
    np.testing.assert_allclose(distributed["elbo"], np.asarray(single.history.elbo), rtol=1e-9)
    assert abs(distributed["final"] - float(single.elbo)) <= 1e-9 * abs(float(single.elbo))


class _WatchedStream(ngvi.Stream):
    """Records the largest live JAX array each time the fit reads a batch."""

    largest = 0

    def rows(self, indices, likelihood, dtype):
        sizes = [a.size for a in jax.live_arrays()]
        self.largest = max([self.largest, *sizes])
        return super().rows(indices, likelihood, dtype)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_streamed_fit_from_a_memory_map_equals_the_in_memory_fit(tmp_path):
    N, B, Z = 1_000_000, 4096, jnp.linspace(-2.0, 2.0, 16)[:, None] * jnp.ones((1, 2))
    rng = np.random.default_rng(0)
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", shape=(N, 2))
    X[:] = rng.normal(size=(N, 2))
    y = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", shape=(N,))
    y[:] = (np.sin(2 * X[:, 0]) + 0.5 * rng.normal(size=N) > 0).astype(float)
    X.flush(), y.flush()
    del X, y
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0)
    key, options = jax.random.PRNGKey(7), dict(batch_size=B, progress=False, tol=0.0)

    stream = _WatchedStream(
        np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    )
    empty = ngvi.SparseModel(
        ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), inducing=Z, num_data=N
    )
    streamed = ngvi.fit(empty, ngvi.NaturalGradient(), 12, key=key, data=stream, **options)
    assert 0 < stream.largest < N // 10  # no array of N rows ever reached the device

    X, y = np.load(tmp_path / "X.npy"), np.load(tmp_path / "y.npy")
    resident = ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y, inducing=Z)
    in_memory = ngvi.fit(resident, ngvi.NaturalGradient(), 12, key=key, **options)
    np.testing.assert_allclose(streamed.history.elbo, in_memory.history.elbo, rtol=1e-12)
    np.testing.assert_allclose(streamed.q.parameters[0], in_memory.q.parameters[0], rtol=1e-10)
    assert abs(streamed.elbo - in_memory.elbo) <= 1e-10 * abs(in_memory.elbo)
    assert abs(streamed.initial_elbo - in_memory.initial_elbo) <= 1e-10 * N


def test_stream_arguments_are_checked():
    p = _problem()
    X, y, Z = p["X"], p["y"], p["Z"]
    kernel = ngvi.kernels.SquaredExponential()
    lik = ngvi.likelihoods.Probit()
    empty = ngvi.SparseModel(ngvi.GPPrior(kernel), lik, inducing=Z, num_data=len(y))
    strategy = ngvi.NaturalGradient()
    with pytest.raises(ValueError, match="needs `batch_size`"):
        ngvi.fit(empty, strategy, 2, data=ngvi.Stream(X, y), progress=False)
    with pytest.raises(ValueError, match="holds no data"):
        ngvi.fit(empty, strategy, 2, progress=False)
    with pytest.raises(ValueError, match="has 1000 rows"):
        ngvi.fit(empty, strategy, 2, batch_size=10, data=ngvi.Stream(X[:1000], y[:1000]))
    with pytest.raises(ValueError, match="made without data"):
        ngvi.fit(p["make"](X, y), strategy, 2, batch_size=10, data=ngvi.Stream(X, y))
    with pytest.raises(ValueError, match="needs `num_data=`"):
        ngvi.SparseModel(ngvi.GPPrior(kernel), lik, inducing=Z)
    with pytest.raises(ValueError, match="both `X` and `y`"):
        ngvi.SparseModel(ngvi.GPPrior(kernel), lik, X, None, inducing=Z)
    bad = y.copy()
    bad[:] = 5.0
    with pytest.raises(ValueError, match="In a batch of the stream"):
        ngvi.fit(empty, strategy, 3, batch_size=100, data=ngvi.Stream(X, bad), progress=False)


def test_a_stream_takes_lists_and_column_targets_like_an_in_memory_model():
    """Reproducers: `Stream(X.tolist(), y.tolist())` failed inside the fit with NumPy's "only
    integer scalar arrays can be converted", `(N, 1)` targets were refused (in-memory models
    take them) and `prefetch=1.5` was truncated to 1."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] > 0).astype(float)
    Z = X[:8]
    kernel = ngvi.kernels.SquaredExponential()
    empty = ngvi.SparseModel(
        ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), inducing=Z, num_data=200
    )
    options = dict(batch_size=50, key=jax.random.PRNGKey(1), progress=False, tol=0.0)
    reference = ngvi.fit(empty, ngvi.NaturalGradient(), 6, data=ngvi.Stream(X, y), **options)
    for stream in (ngvi.Stream(X.tolist(), y.tolist()), ngvi.Stream(X, y[:, None])):
        result = ngvi.fit(empty, ngvi.NaturalGradient(), 6, data=stream, **options)
        np.testing.assert_array_equal(result.q.parameters[0], reference.q.parameters[0])
    with pytest.raises(ValueError, match="`prefetch` must be a positive integer, got 1.5"):
        ngvi.Stream(X, y, prefetch=1.5)


def test_a_stream_names_its_own_row_of_a_non_finite_value():
    """Reproducer (adversarial review): a NaN in row 499 of a streamed data set was reported
    "first at index [[51, 0]]", its place in the 64-row batch."""
    rng = np.random.default_rng(0)
    X, y = rng.uniform(-3, 3, (500, 2)), rng.integers(0, 2, 500).astype(float)
    X[499, 0] = np.nan
    stream, probit = ngvi.Stream(X, y), ngvi.likelihoods.Probit()
    with pytest.raises(ValueError, match=r"`X` holds NaN/inf in row\(s\) 499 \("):
        stream.rows(np.arange(436, 500), probit, jnp.float64)
    y[7] = np.inf
    with pytest.raises(ValueError, match=r"`y` holds NaN/inf in row\(s\) 7 \("):
        stream.rows(np.array([300, 7, 12]), probit, jnp.float64)  # a shuffled minibatch
    y[7] = 2.0  # outside the probit's labels: the check's own message
    with pytest.raises(ValueError, match="In a batch of the stream"):
        stream.rows(np.array([300, 7, 12]), probit, jnp.float64)
