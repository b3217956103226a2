"""What a running fit shows, to suit where it runs.

- On a terminal (or in a notebook), a tqdm bar that appears once the fit has run for three
  seconds, with the ELBO of the current `q`: the posterior after the last step taken, not the
  ELBO the last step started from (`history.elbo[t]`).
- When stderr is not a terminal (a log file, a pipe, a CI job), no bar, whose carriage returns
  would fill the log: one line per tenth of the step budget, once the fit has run for three
  seconds, so a short fit writes nothing and a long one ten lines at most, e.g.
  `ngvi.fit: step 300/1000, ELBO -115.41, 12.3 s`.

The ELBO shown costs a full-data ELBO evaluation, so it is computed at most once a second, and
no more often than every ten times what one evaluation took (a large data set). A streamed fit
(`data=`) shows the ELBO estimate of its last batch instead, labelled as such.
"""

import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

DELAY = 3.0


def interactive(stream=None) -> bool:
    """Whether a progress bar suits `stream` (default stderr): a terminal, or a notebook (tqdm
    then draws a widget)."""
    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """The bar or the log lines of one fit (a context manager); `update` after every chunk.

    - `elbo`: `carry -> ELBO of the current q`, or `None` to show the last step's (batch)
      estimate `history.elbo[step - 1]`.
    """

    def __init__(self, num_steps: int, enabled: bool, elbo: Callable | None = None):
        self.num_steps, self.elbo = num_steps, elbo
        self.bar_mode = enabled and interactive()
        self.log_mode = enabled and not self.bar_mode
        self.log_every = max(1, num_steps // 10)
        self.start = time.perf_counter()
        self.shown_at, self.cost, self.logged = -float("inf"), 0.0, 0
        self.bar = tqdm(total=num_steps, disable=not self.bar_mode, delay=DELAY, desc="ngvi.fit")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def update(self, carry, done: int) -> None:
        """Record `done` more steps; `carry` is the loop state after them."""
        self.bar.update(done)
        now = time.perf_counter()
        step = int(carry.step)
        if now - self.start < DELAY:
            return
        if self.bar_mode and now - self.shown_at >= max(1.0, 10 * self.cost):
            label, value = self._elbo(carry)
            self.bar.set_postfix({label: f"{value:.6g}"})
            self.shown_at = time.perf_counter()
        elif self.log_mode and step // self.log_every > self.logged:
            self.logged = step // self.log_every
            label, value = self._elbo(carry)
            elapsed = time.perf_counter() - self.start
            print(
                f"ngvi.fit: step {step}/{self.num_steps}, {label} {value:.6g}, {elapsed:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    def _elbo(self, carry) -> tuple[str, float]:
        if self.elbo is None:
            return "batch ELBO", float(carry.history.elbo[max(int(carry.step) - 1, 0)])
        start = time.perf_counter()
        value = float(self.elbo(carry))
        self.cost = time.perf_counter() - start
        return "ELBO", value
