"""`class X(NamedTuple)` for the modules on lbadm's import path, without importing typing.

lbadm starts a Python for every command (issue 15: one command under 0.1 s). Importing typing
costs ~5 ms of that, and every field of a typing.NamedTuple ~60 us more at class creation (typing
compiles each field's annotation into a ForwardRef): ~8 ms of lbadm's ~37 ms of imports. This
NamedTuple makes the same class from the same class body with collections.namedtuple: fields are
the annotated names in order, their class values the defaults, methods, properties and the
docstring are kept. mypy reads it as typing.NamedTuple. As with typing's, methods cannot use
`super()`.

Those modules take their other typing names (Any, Self, ...) under `if TYPE_CHECKING:`, with
`TYPE_CHECKING = False` of their own (mypy treats every `TYPE_CHECKING` as true).
tests/unit/test_lbadm_imports.py checks that `import lb.lbadm` imports no typing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    import collections

    # What a class body holds besides its fields and methods (typing.NamedTuple skips the same).
    _NOT_COPIED = frozenset({"__module__", "__qualname__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
            if not bases:  # NamedTuple itself
                return super().__new__(mcs, name, bases, ns)
            fields = list(ns.get("__annotations__", {}))
            with_default = [field in ns for field in fields]
            if with_default != sorted(with_default):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(name, fields, defaults=[ns[f] for f in fields if f in ns],
                                         module=str(ns["__module__"]))
            for key, value in ns.items():
                if key not in _NOT_COPIED and key not in fields:
                    setattr(cls, key, value)
            cls.__qualname__ = str(ns["__qualname__"])
            cls.__annotations__ = dict(ns.get("__annotations__", {}))
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base of a named tuple class: its annotated class attributes are the fields."""
