"""The module tree as a capture sees it: adapted modules, the others, and the ones generic discovery watches.

Walking a model of 700 modules costs about a millisecond of Python, a few per cent of a small CNN's forward, and a
capture is often opened around every forward (the app, video frames, the atlas). The walk is therefore kept per model
and re-used while the tree is unchanged: every module's children are compared (by identity) with the ones seen, the
instance conditions of adapters (:func:`~attnviz.capture.adapters.register_adapter`'s ``when``) are asked again, and
a newly registered adapter invalidates it. Any difference walks again.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .adapters import AdapterSpec, adapter_count, find_adapter, has_condition
from .discovery import class_uses_gates

Factory = Callable[[nn.Module], AdapterSpec]


Ref = weakref.ReferenceType


@dataclass
class Walk:
    """One pass over a module tree. Modules are held weakly (the walk is kept per model and must not keep it alive).

    Attributes:
        modules: How many modules were looked at (each once, however often it is shared).
    """

    modules: int = 0
    _adapted: list[tuple[str, Ref[nn.Module], Factory]] = field(default_factory=list)
    _free: list[tuple[str, Ref[nn.Module]]] = field(default_factory=list)
    _nodes: list[tuple[Ref[nn.Module], tuple[int, ...]]] = field(default_factory=list)
    _conditional: list[tuple[Ref[nn.Module], Factory | None]] = field(default_factory=list)
    _adapters: int = 0
    _watch: dict[str, tuple[list[str], list[tuple[str, Ref[nn.Module]]]]] = field(default_factory=dict)

    def unchanged(self) -> bool:
        """Whether every module walked is alive with the same children and adapter, and no adapter was registered since.
        (A child replaced by a new object that reuses a freed one's id is caught: the freed one's own entry is dead.)"""
        if self._adapters != adapter_count():
            return False
        for ref, kids in self._nodes:
            m = ref()
            if m is None or tuple(map(id, m._modules.values())) != kids:
                return False
        return all((m := ref()) is not None and find_adapter(m) is fn for ref, fn in self._conditional)

    def adapted(self) -> list[tuple[str, nn.Module, Factory]]:
        """``(path, module, adapter factory)`` of every module an adapter covers."""
        return [(n, _alive(r), f) for n, r, f in self._adapted]

    def watch(self, generic: str) -> tuple[list[str], list[tuple[str, nn.Module]]]:
        """What generic discovery watches outside adapted subtrees (``"auto"``: modules whose class's code names a gate
        function; ``"all"``: every one), and the free modules to hook: the watched ones and every one on the way to one."""
        if generic not in self._watch:
            cands = [n for n, r in self._free if generic == "all" or class_uses_gates(type(_alive(r)))]
            hooked: set[str] = set()
            for n in cands:
                parts = n.split(".") if n else []
                hooked.update(".".join(parts[:i]) for i in range(len(parts) + 1))
            self._watch[generic] = (cands, [(n, r) for n, r in self._free if n in hooked])
        cands, frames = self._watch[generic]
        return cands, [(n, _alive(r)) for n, r in frames]


def _alive(ref: Ref[nn.Module]) -> nn.Module:
    m = ref()
    if m is None:  # only between a check and its use, if another thread frees part of the model
        raise RuntimeError("a module of the model was freed while a capture was being set up")
    return m


def _walk(target: nn.Module) -> Walk:
    w = Walk(_adapters=adapter_count())
    seen: set[int] = set()

    def visit(module: nn.Module, name: str, inside_adapted: bool) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        ref = weakref.ref(module)
        factory = find_adapter(module)
        if has_condition(module):
            w._conditional.append((ref, factory))
        if factory is not None:
            w._adapted.append((name, ref, factory))
        elif not inside_adapted:
            w._free.append((name, ref))
        w._nodes.append((ref, tuple(map(id, module._modules.values()))))
        for child_name, child in module._modules.items():
            if child is not None:
                visit(child, f"{name}.{child_name}" if name else child_name, inside_adapted or factory is not None)

    visit(target, "", False)
    w.modules = len(w._adapted) + len(w._free)
    return w


_WALKS: weakref.WeakKeyDictionary[nn.Module, Walk] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def walk(target: nn.Module) -> Walk:
    """The walk of ``target``'s tree: the kept one while the tree is unchanged, else a new one (then kept)."""
    with _LOCK:
        w = _WALKS.get(target)
        if w is None or not w.unchanged():
            w = _WALKS[target] = _walk(target)
        return w
