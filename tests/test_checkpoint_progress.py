"""The progress display of `fit` (`ngvi.fitting.progress`): no bar off a terminal, a line per
tenth of the steps in a log, and the ELBO of the current `q`, not of the step before."""

import io

import jax.numpy as jnp
from helpers import tutorial_model

import ngvi
from ngvi.fitting import progress


class FakeCarry:
    def __init__(self, step):
        self.step = jnp.asarray(step)
        self.history = ngvi.StepInfo(*(jnp.arange(100.0),) * 5)


def test_a_log_gets_one_line_per_tenth_of_the_steps(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "interactive", lambda stream=None: False)
    shown = progress.Progress(100, True, elbo=lambda carry: -float(carry.step))
    assert shown.bar.disable  # no bar off a terminal
    with shown:
        for step in range(5, 101, 5):
            shown.update(FakeCarry(step), 5)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("ngvi.fit: step 10/100, ELBO -10,")  # the current step's ELBO
    with progress.Progress(100, False) as silent:
        silent.update(FakeCarry(50), 50)
    assert capsys.readouterr().err == ""


def test_a_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress.interactive(Terminal()) and not progress.interactive(io.StringIO())


def test_fit_shows_the_elbo_of_the_current_posterior(monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "interactive", lambda stream=None: True)
    seen = []

    def record(self, carry):
        seen.append((int(carry.step), float(self.elbo(carry))))
        return "ELBO", seen[-1][1]

    monkeypatch.setattr(progress.Progress, "_elbo", record)
    model = tutorial_model()
    ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), 3, tol=0.0)
    step, shown = seen[0]
    after = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), step, tol=0.0, progress=False)
    assert step >= 1 and after.num_steps == step
    assert shown == float(after.elbo)  # the posterior after the last step, not before it
