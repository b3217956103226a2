"""scikit-learn estimators backed by ngvi's natural-gradient GP inference.

Requires the optional extra: `pip install ngvi[sklearn]`. Three estimators share one engine:

| estimator | likelihood | `predict` returns |
|---|---|---|
| `GaussianProcessClassifier` | probit or logit, binary labels | the more probable class |
| `GaussianProcessRegressor` | Gaussian, learned noise | the predictive mean (and sd) of `y*` |
| `PoissonProcessRegressor` | Poisson, log link | the predictive mean rate `exp(m + v / 2)` |

Each `fit` builds `ngvi.Model(GPPrior(kernel), likelihood, X, y)` and runs
`ngvi.fit(model, NaturalGradient(lr=1.0), num_steps, learn=LearnHyperparameters(adam(lr)))`:
natural-gradient steps on the posterior interleaved with Adam steps on the kernel's log-parameters
(and the Gaussian noise) that climb the ELBO. With `learn_hyperparameters=False` the kernel is
held at its initial values and `fit` is plain natural-gradient VI.

All computation runs in float64 inside `jax.enable_x64(True)` (a context manager: importing or
using this module does not switch JAX's global default to 64 bits). Results are NumPy arrays.

```python
from ngvi.sklearn import GaussianProcessClassifier

clf = GaussianProcessClassifier(kernel="se", ard=True).fit(X, y)
clf.predict_proba(X_test)[:, 1], clf.score(X_test, y_test)
```
"""

from .classifier import GaussianProcessClassifier as GaussianProcessClassifier
from .regressors import (
    GaussianProcessRegressor as GaussianProcessRegressor,
    PoissonProcessRegressor as PoissonProcessRegressor,
)

__all__ = ["GaussianProcessClassifier", "GaussianProcessRegressor", "PoissonProcessRegressor"]
