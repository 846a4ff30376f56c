"""The pure-Python packet engine: the executable specification of docs/fastpath.md."""

from lb.pyengine.engine import PyEngine

__all__ = ["PyEngine"]
