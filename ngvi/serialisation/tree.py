"""A pytree as JSON plus a list of arrays, and back, without running code named by a file.

`describe(tree, arrays)` writes every node as JSON: an `eqx.Module` as its class (`module:qualname`)
and all its fields (static ones included), tuples, lists, string-keyed dicts, named tuples,
Python scalars and `None` as themselves, a class as its name, a function as its name only (code
is never stored), and an array as `{"array": i, "shape": ..., "dtype": ...}` with the array
appended to `arrays`. With `arrays=None` an array is described by a hash of its bytes instead
and anything unknown by its type's name: a *fingerprint*, for comparing two pytrees across
processes (a checkpoint's fit against the current one).

`rebuild(spec, arrays, classes, functions)` is the inverse. A class is looked up by name only
in `ngvi` and `equinox` (imported modules of those packages) or among the `classes` the caller
passes; a module is rebuilt the way `jax.tree_util` unflattens it (`object.__new__` and the
fields set one by one), so no `__init__`, no `__check_init__` and no user code runs; a function
must be among the `functions` the caller passes.
"""

import dataclasses
import hashlib
import importlib
import types

import equinox as eqx
import jax
import numpy as np

TRUSTED_PACKAGES = ("ngvi", "equinox")


class TreeError(ValueError):
    """A pytree that cannot be described, or a description that cannot be rebuilt."""


def class_name(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def describe(tree, arrays: list | None, where: str = "result"):
    """The JSON description of `tree` (see the module docstring); `where` names the node in
    error messages."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"value": tree}
    if isinstance(tree, (jax.Array, np.ndarray, np.generic)):
        return _describe_array(tree, arrays, where)
    if isinstance(tree, eqx.Module):
        fields = {
            field.name: describe(getattr(tree, field.name), arrays, f"{where}.{field.name}")
            for field in dataclasses.fields(tree)
        }
        return {"module": class_name(type(tree)), "fields": fields}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a named tuple
        items = [
            describe(v, arrays, f"{where}.{k}") for k, v in zip(tree._fields, tree, strict=True)
        ]
        return {"namedtuple": class_name(type(tree)), "items": items}
    if isinstance(tree, (tuple, list)):
        items = [describe(v, arrays, f"{where}[{i}]") for i, v in enumerate(tree)]
        return {type(tree).__name__: items}
    if isinstance(tree, dict) and all(isinstance(k, str) for k in tree):
        return {"dict": {k: describe(v, arrays, f"{where}[{k!r}]") for k, v in tree.items()}}
    if isinstance(tree, type):
        return {"class": class_name(tree)}
    if isinstance(tree, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        spec = {"function": getattr(tree, "__qualname__", repr(tree))}
        if arrays is None and isinstance(tree, types.FunctionType):
            spec.update(_closed_over(tree, where))
        return spec
    if arrays is None:  # a fingerprint: the type's name is all that is stable across processes
        return {"object": class_name(type(tree))}
    raise TreeError(f"cannot save {where}: a {type(tree).__name__} is not a module, an array "
                    "or a plain value")  # fmt: skip


_describing: set[int] = set()  # the functions being described, against reference cycles


def _closed_over(function, where) -> dict:
    """For a fingerprint: what `function` closes over and its defaults, described in turn (a
    `ParametricModel`'s log-likelihood holds its data there, an optax optimizer its learning
    rate and schedule: compared by name only, a checkpoint resumed on other data or another
    learning rate)."""
    if id(function) in _describing:
        return {"recursive": True}
    _describing.add(id(function))
    try:
        cells = []
        for cell in function.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not yet filled
                cells.append({"value": None})
                continue
            cells.append(describe(contents, None, f"{where}.<closure>"))
        defaults = describe(tuple(function.__defaults__ or ()), None, f"{where}.<defaults>")
        return {"closure": cells, "defaults": defaults}
    finally:
        _describing.discard(id(function))


def _describe_array(original, arrays, where):
    if jax.dtypes.issubdtype(original.dtype, jax.dtypes.prng_key):
        if arrays is not None:
            raise TreeError(f"cannot save {where}: a typed PRNG key (save jax.random.key_data).")
        # A fingerprint (a checkpoint's `key=jax.random.key(0)`): the key's bits identify it.
        original = jax.random.key_data(original)
    fully_addressable = getattr(original, "is_fully_addressable", True)
    x = np.asarray(original) if fully_addressable else original
    if not isinstance(x, np.ndarray):
        raise TreeError(f"cannot save {where}: its array is spread over several processes.")
    spec = {"shape": list(x.shape), "dtype": x.dtype.name}
    if not isinstance(original, jax.Array):
        spec["numpy"] = True  # comes back as a NumPy array, not a JAX one
    if arrays is None:
        spec["sha256"] = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:32]
    else:
        spec["array"] = len(arrays)
        arrays.append(x)
    return spec


def walk(spec):
    """Every JSON object (`dict`) in a description, depth first, each before what it holds."""
    if isinstance(spec, dict):
        yield spec
        for value in spec.values():
            yield from walk(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from walk(value)


def classes_in(spec) -> set[str]:
    """The class names a description refers to."""
    keys = ("module", "namedtuple", "class")
    return {node[key] for node in walk(spec) for key in keys if isinstance(node.get(key), str)}


def rebuild(spec, arrays, classes=(), functions=()):
    """The pytree `spec` describes, its arrays taken from `arrays` (see the module docstring).

    **Raises:** `TreeError` for a class that is neither in a trusted package nor in `classes`,
    a function not in `functions`, or fields that do not match the class's."""
    lookup = _Lookup(classes, functions)
    return lookup.build(spec, arrays)


class _Lookup:
    def __init__(self, classes, functions):
        self.classes = {cls.__qualname__: cls for cls in classes}
        self.functions = {fn.__qualname__: fn for fn in functions}

    def build(self, node, arrays):
        if not isinstance(node, dict) or len(node) == 0:
            raise TreeError(f"unexpected node {str(node)[:60]!r}")
        if "value" in node:
            return node["value"]
        if "array" in node:
            array = arrays[node["array"]]
            return array if node.get("numpy") else jax.numpy.asarray(array)
        if "module" in node:
            return self.module(node, arrays)
        if "namedtuple" in node:
            cls = self.cls(node["namedtuple"], tuple)
            return cls(*(self.build(item, arrays) for item in node["items"]))
        if "tuple" in node:
            return tuple(self.build(item, arrays) for item in node["tuple"])
        if "list" in node:
            return [self.build(item, arrays) for item in node["list"]]
        if "dict" in node:
            return {k: self.build(v, arrays) for k, v in node["dict"].items()}
        if "class" in node:
            return self.cls(node["class"], object)
        if "function" in node:
            name = node["function"]
            if name not in self.functions:
                raise TreeError(
                    f"it holds the function {name!r}, whose code is never saved: pass it, "
                    f"as in `ngvi.load(path, functions=[{name.split('.')[-1]}])`"
                )
            return self.functions[name]
        raise TreeError(f"unknown node kind {sorted(node)}")

    def module(self, node, arrays):
        cls = self.cls(node["module"], eqx.Module)
        saved = node["fields"]
        names = [field.name for field in dataclasses.fields(cls)]
        if sorted(names) != sorted(saved):
            raise TreeError(
                f"{cls.__qualname__} has fields {names} here but {sorted(saved)} in the file "
                "(was it written by another version of its code?)"
            )
        obj = object.__new__(cls)  # as jax.tree_util unflattens an eqx.Module
        for name in names:
            object.__setattr__(obj, name, self.build(saved[name], arrays))
        return obj

    def cls(self, name: str, base: type):
        module, _, qualname = name.partition(":")
        cls = self.classes.get(qualname)
        if cls is None and module.split(".")[0] in TRUSTED_PACKAGES and "<" not in qualname:
            try:
                cls = importlib.import_module(module)
                for part in qualname.split("."):
                    cls = getattr(cls, part)
            except (ImportError, AttributeError):
                raise TreeError(f"the class {name!r} does not exist in this version") from None
        if cls is None:
            raise TreeError(
                f"it holds the class {name!r}, which is not part of ngvi: pass it, as in "
                f"`ngvi.load(path, classes=[{qualname.split('.')[-1]}])`"
            )
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TreeError(f"{name!r} is not a {base.__name__}")
        return cls
