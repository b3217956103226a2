"""JAX's persistent compilation cache, for ngvi users who opt in.

A fit compiles its loop once per problem shape, which takes seconds; the compiled loop is then
reused within the process. The persistent cache keeps compiled programs on disk, so a new
process (a restarted notebook, a cross-validation run, every `ngvi fit` on the command line)
reads them back instead of compiling again.

It is **off by default**: with jaxlib 0.10.2 on CPU, writing a compiled fit to the cache
crashed the process with a segmentation fault (in `put_executable_and_time`, during the test
suite), and a crash is worse than a recompile.

- Turn it on: `NGVI_COMPILATION_CACHE=1`.
- Where: `$NGVI_CACHE_DIR`, else `$XDG_CACHE_HOME/ngvi/jax`, else `~/.cache/ngvi/jax`.
- A cache directory the user already gave JAX (`jax_compilation_cache_dir`, or the
  `JAX_COMPILATION_CACHE_DIR` environment variable) is left alone.
"""

import os
from pathlib import Path

import jax

MIN_COMPILE_SECONDS = 0.1  # cache programs that took at least this long to compile


def cache_directory() -> Path:
    if os.environ.get("NGVI_CACHE_DIR"):
        return Path(os.environ["NGVI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ngvi" / "jax"


def configure() -> None:
    if os.environ.get("NGVI_COMPILATION_CACHE", "0").strip().lower() not in ("1", "true", "yes"):
        return
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = cache_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)


configure()
