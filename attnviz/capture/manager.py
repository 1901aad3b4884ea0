"""The hook manager: ``with capture(model) as cap: model(x)``.

Lifecycle (after torch-cam's): every hook handle goes into one list on entry and all are removed in
``__exit__``, also when the forward raised; the model's train/eval state and its own hooks are never
touched. Hooks only record calls made on the thread that entered the context, so two threads can
capture the same model at once. What is stored is cloned (captum's habit): later in-place ops of the
model cannot change a record.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import intercept
from .adapters import AdapterSpec, gate_contribution, relative
from .discovery import WATCHED, GateMode, grid_record
from .plan import CHANGES_INPUT, FUSED, PLANS, SDPA, VALUE_READS, Fast, Plan, Recording, fused_qk, signature, tensor_args
from .provenance import Seen, func_name
from .records import NOT_CHANGED, SLICE, Record, SamplingGrid, keep, scratch
from .tracker import Frame, Tracker
from .walk import walk

Generic = Literal["auto", "all", "off"]


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def _version(t: torch.Tensor | None) -> int | None:
    if t is None or t.is_inference():  # inference tensors keep no version counter (and cannot be changed in place)
        return None
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter (and cannot be changed in place)
        return None


def contribution(x: torch.Tensor | None, out: object, version: int | None) -> Callable[[], torch.Tensor] | None:
    """``‖out − x‖ / ‖x‖`` per sample ``(B,)`` (NaN where x is all zeros), deferred (:meth:`Record.defer_contribution`: the
    two norms are taken now, their ratio on first read), or None when shapes differ or x changed in place."""
    if x is None or not isinstance(out, torch.Tensor) or out.shape != x.shape or x.ndim < 2:
        return None
    if version is not None and _version(x) != version:
        return None
    with torch.no_grad():
        xf, of = x.detach().flatten(1), out.detach().flatten(1)  # (B, D)
        if xf.shape[1] <= _CHUNK or xf.device.type != "cpu":  # (a device's own allocator caches its blocks)
            xf = xf.float()
            diff = torch.linalg.vector_norm(of.float() - xf, dim=1)
            return functools.partial(_ratio, diff, torch.linalg.vector_norm(xf, dim=1))
        d, n = _chunked_norms(xf, of)
        return functools.partial(_ratio, d, n)


def _ratio(diff: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return relative(diff.cpu(), norm.cpu()).float()


_CHUNK = SLICE  # features per sample above which the difference is formed in slices (no transient the size of x)


def _chunked_norms(xf: torch.Tensor, of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``‖out − x‖`` and ``‖x‖`` per sample of two ``(B, D)`` views, summed over slices of :data:`_CHUNK` features in
    float64, the differences formed in the thread's :func:`~attnviz.capture.records.scratch` buffer: a large map (a
    transformer at 518², a 1024² feature map) leaves no full-size difference behind in the allocator's heap."""
    d2 = torch.zeros(xf.shape[0], dtype=torch.float64)  # (B,)
    n2 = torch.zeros(xf.shape[0], dtype=torch.float64)
    for b in range(xf.shape[0]):
        for i in range(0, xf.shape[1], _CHUNK):
            a, o = xf[b, i:i + _CHUNK].float(), of[b, i:i + _CHUNK].float()  # (D',)
            diff = torch.sub(o, a, out=scratch(a.numel()))
            d2[b] += float(torch.linalg.vector_norm(diff)) ** 2
            n2[b] += float(torch.linalg.vector_norm(a)) ** 2
    return d2.sqrt(), n2.sqrt()


def unwrap(model: nn.Module) -> nn.Module:
    """The eager module behind ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``.

    Raises:
        TypeError: ``model`` is TorchScript (hooks cannot see inside it) or not a module.
    """
    while True:
        if isinstance(model, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
            raise TypeError(
                "attnviz cannot capture a TorchScript module: scripted code runs without Python hooks. "
                "Capture the eager nn.Module (before torch.jit.script/trace) instead."
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


class Capture:
    """Context manager that records every attention map of one or more forward passes.

    Args:
        model: Any ``nn.Module`` (compiled and data-parallel wrappers are unwrapped).
        generic: ``"auto"`` runs generic discovery in modules whose code names a gate function and
            that no adapter covers; ``"all"`` watches every module; ``"off"`` uses adapters only.

    Attributes:
        records: ``name -> Record`` in forward order; the k-th call of a module is ``name#k``.
        seen: Watched ops of generic discovery that produced no record, each with the reason
            (:class:`~attnviz.capture.provenance.Seen`): what was seen and not drawn.
        looked_at: How many modules were examined, adapted and watched (for "found nothing" messages).
        replays: Forwards that replayed a plan (lazy labelling, :mod:`attnviz.capture.plan`) instead of following every op.
    """

    def __init__(self, model: nn.Module, generic: Generic = "auto") -> None:
        if generic not in ("auto", "all", "off"):
            raise ValueError(f"generic must be 'auto', 'all' or 'off', got {generic!r}")
        self.model = model
        self.generic = generic
        self.records: OrderedDict[str, Record] = OrderedDict()
        self.seen: list[Seen] = []
        self.looked_at: dict[str, int] = {}
        self.replays = 0
        self._tracker: Tracker | None = None
        self._handles: list[RemovableHandle] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._thread: int | None = None
        self._mode: GateMode | None = None
        self._stack: list[Frame] = []
        self._grids: dict[int, tuple[torch.Tensor, SamplingGrid]] = {}
        self._from_x: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[Any]]] = {}  # tensor -> keys of the calls whose input it changes
        self._call_stacks: list[list[Any]] = []
        self._restore: list[Callable[[], None]] = []
        self._modules: dict[str, nn.Module] = {}
        self._active = False
        # ops are fully tracked only while a watched module (or the parent of one whose gate is still unused)
        # runs; elsewhere only their axis labels are propagated (cheap, and needed for provenance)
        self._watched: set[str] = set()
        self._depth = 0  # watched frames on the stack
        self._mode_on = False
        self._hold: Frame | None = None  # keep watching ops until this frame returns (a gate made by its child is unused)
        self._span_start = 0  # tracker candidates before the current watched span
        # lazy labelling (see plan): the first forward at a signature follows every op and records a plan; later ones
        # replay it, watching ops only inside its regions
        self._target: nn.Module | None = None
        self._structure: tuple[Any, ...] = ()
        self._pushed = False  # our mode is on torch's function-mode stack
        self._sig: tuple[Any, ...] | None = None
        self._replay: Plan | None = None
        self._recording: Recording | None = None
        self._calls: dict[str, int] = {}
        self._open = 0  # replayed regions on the stack
        self._fast: Fast | None = None  # the fast region being replayed
        self._fast_i = 0
        self._intercepting = False  # this capture holds the F.scaled_dot_product_attention wrapper (intercept)
        self._in_fused = False  # the tracker decides on a fused attention op (discovery)

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self._active:
            raise RuntimeError("this Capture is already active; use a new capture() for nested use")
        target = self._prepare(self.model)
        self._target = target
        self._thread = threading.get_ident()
        self._active = True
        try:
            tree = walk(target)
            adapted = tree.adapted()
            self.looked_at = {"modules": tree.modules, "adapted": len(adapted), "watched": 0}
            for name, module, factory in adapted:
                self._attach_one(name, module, factory(module))
            if self.generic != "off":
                self._attach_discovery(adapted, *tree.watch(self.generic))
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()  # never swallows the exception of the with-block

    def _teardown(self) -> None:
        try:
            self._release()
            if self._mode is not None and self._pushed:
                self._mode.__exit__(None, None, None)
            if self._tracker is not None:
                self._tracker.finish()  # forwards that bypassed the model's own __call__ (e.g. mmseg's encode_decode)
        finally:
            self._mode = None
            self._pushed = False
            self._replay = self._recording = None
            self._tracker = None
            self._watched = set()
            self._depth = 0
            self._hold = None
            for h in self._handles:
                h.remove()
            self._handles.clear()
            for undo in reversed(self._restore):
                undo()
            self._restore.clear()
            self._stack.clear()
            self._grids.clear()
            self._from_x.clear()
            self._call_stacks.clear()
            self._modules.clear()
            self._active = False

    def _prepare(self, model: nn.Module) -> nn.Module:
        """Unwrap; make a compiled model run its eager original while captured (exact records)."""
        target = unwrap(model)
        m = model
        while m is not target:
            if isinstance(getattr(m, "_orig_mod", None), nn.Module) and "forward" in vars(m):
                compiled_forward = vars(m)["forward"]
                vars(m)["forward"] = m._orig_mod.__call__

                def undo(m: nn.Module = m, f: Any = compiled_forward) -> None:
                    vars(m)["forward"] = f

                self._restore.append(undo)
            m = m._orig_mod if isinstance(getattr(m, "_orig_mod", None), nn.Module) else m.module
        return target

    def clear(self) -> None:
        """Forget the records so far (e.g. between two forwards in one context)."""
        with self._lock:
            self.records.clear()
            self.seen.clear()
            self._counts.clear()

    # ---- recording -------------------------------------------------------------------------------
    def _mine(self) -> bool:
        return threading.get_ident() == self._thread

    def _emit(self, base: str, rec: Record, module: nn.Module, source: str, contrib: Callable[[], torch.Tensor] | None, changes_input: bool = True) -> None:
        if not changes_input:
            rec.contribution_note = NOT_CHANGED
        with self._lock:
            n = self._counts.get(base, 0) + 1
            self._counts[base] = n
            rec.name = base if n == 1 else f"{base}#{n}"
            rec.module_type = type(module).__name__
            rec.source = source
            if contrib is None:
                rec.contribution = None
            else:
                rec.defer_contribution(contrib)
            self.records[rec.name] = rec

    def _attach_one(self, name: str, module: nn.Module, spec: AdapterSpec) -> None:
        calls: list[dict[str, Any]] = []  # one entry per active call (modules may recurse)
        self._call_stacks.append(calls)

        # both hook forms are accepted: see _attach_frame
        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            if not self._mine():
                return
            kwargs = kwargs or {}
            x = _first_tensor(args, kwargs)
            call: dict[str, Any] = {"x": x, "version": _version(x), "stash": {}}
            if spec.on_input is not None and x is not None:
                with torch.no_grad():
                    call["stash"].update(spec.on_input(mod, x))
            calls.append(call)

        def post(mod: nn.Module, args: tuple[Any, ...], *kwargs_out: Any) -> None:
            if not self._mine() or not calls:
                return
            out = kwargs_out[-1]
            call = calls.pop()
            with torch.no_grad():
                built = spec.build(mod, call["x"], out, call["stash"])
                gate = call["stash"].get(spec.gate_of) if spec.gate_of else None
                if not spec.changes_input:
                    contrib = None
                elif gate is not None and call["x"] is not None and (call["version"] is None or _version(call["x"]) == call["version"]):
                    contrib = gate_contribution(call["x"], gate)
                else:
                    contrib = contribution(call["x"], out, call["version"])
            for suffix, rec in built:
                self._emit(name + suffix if name else suffix.lstrip(".") or type(mod).__name__, rec, mod, "adapter", contrib, spec.changes_input)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        for key, (sub, select) in spec.taps.items():
            self._handles.append(sub.register_forward_hook(self._tap(calls, key, select)))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _tap(self, calls: list[dict[str, Any]], key: str, select: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            if self._mine() and calls:
                calls[-1]["stash"][key] = keep(select(out) if select is not None else out)

        return hook

    # ---- generic discovery -----------------------------------------------------------------------
    def _attach_discovery(self, adapted: list[tuple[str, nn.Module, Callable[[nn.Module], AdapterSpec]]], candidates: list[str],
                          frames: list[tuple[str, nn.Module]]) -> None:
        if not candidates:
            return
        self.looked_at["watched"] = len(candidates)
        for name, module in frames:
            self._attach_frame(name, module, False)
        for name, module, _ in adapted:  # frames that tell discovery "an adapter records this"
            self._attach_frame(name, module, True)
        self._watched = set(candidates)
        self._tracker = Tracker(self._emit_generic, self._seen)
        self._tracker.label_token_params(self.model)
        self._structure = (tuple(sorted(self._watched)), tuple((n, id(m), type(m).__name__) for n, m in self._modules.items()))
        self._mode = GateMode(self._on_op)
        self._mode.__enter__()
        self._pushed = True

    def _set_mode(self, on: bool) -> None:
        """Switch between full tracking (``on``) and label propagation only."""
        self._mode_on = on

    def seen_not_drawn(self) -> list[dict[str, Any]]:
        """``seen`` without repeats, as JSON-able dicts (module, op, shape, reason)."""
        out: list[dict[str, Any]] = []
        keys: set[tuple[str, str, tuple[int, ...], str]] = set()
        for s in self.seen:
            k = (s.module, s.op, tuple(s.shape), s.reason)
            if k not in keys:
                keys.add(k)
                out.append(s.as_dict())
        return out

    def _seen(self, item: Seen) -> None:
        if self._recording is not None and not self._in_fused:
            self._recording.simple = False  # a region whose records come from more than its fused ops is replayed in full
        with self._lock:
            self.seen.append(item)

    def _emit_generic(self, frame: Frame, suffix: str, rec: Record) -> None:
        if self._recording is not None and not self._in_fused:
            self._recording.simple = False
        if any(f is frame for f in self._stack):
            frame.pending.append((suffix, rec))  # emitted when the module returns (with its contribution)
        else:
            module = self._modules.get(frame.name)
            self._emit(_joined(frame.name, suffix), rec, module if module is not None else nn.Identity(), "generic", None)

    def _attach_frame(self, name: str, module: nn.Module, adapted: bool) -> None:
        self._modules[name] = module

        # PyTorch registers a with_kwargs hook in two steps (the hook, then its with_kwargs flag) and removes
        # it in two, so a forward running in another thread while a capture on the same model starts or
        # ends can call these hooks without ``kwargs``. Those calls are never ours (``_mine``): accept both forms.
        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            if self._mine():
                with torch._C.DisableTorchFunction():  # our own tensor accesses are not ops of the model
                    self._frame_pre(name, mod, adapted, args, kwargs or {})

        def post(mod: nn.Module, args: tuple[Any, ...], *kwargs_out: Any) -> None:  # (kwargs, out), or (out,) in the race above
            if self._mine() and self._stack and self._stack[-1].name == name:
                with torch._C.DisableTorchFunction():
                    self._frame_post(name, mod, kwargs_out[-1])

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _frame_pre(self, name: str, mod: nn.Module, adapted: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name == "":
            self._start_forward(args, kwargs)
        n = self._calls[name] = self._calls.get(name, 0) + 1
        key = (name, n)
        found = list(tensor_args(args, kwargs))  # also the feature maps of a list (a decode head's inputs)
        region = self._enter_region(key, name, found)
        tr = self._tracker
        if tr is not None and not region and (self._replay is None or self._open):
            for _, t in found:
                tr.label_input(t, top=name == "", module=mod)
        if tr is not None and self._recording is not None:
            self._recording.entries[key] = ([(p, tuple(t.shape), tr.get(t), tr.followed(t)) for p, t in found], tr.batch)
        x = _first_tensor(args, kwargs)
        x4 = x if x is not None and x.ndim in (3, 4) else None  # feature maps and token sequences (B, N, C)
        self._stack.append(Frame(name=name, x=x4, adapted=adapted, version=_version(x4), key=key, region=region))
        if name in self._watched:
            if self._depth == 0 and tr is not None:
                self._span_start = len(tr.cands)
                if self._recording is not None:
                    self._recording.regions.add(key)
                    if self._hold is None:
                        self._recording.begin(key, len(tr.cands))
                        self._intercept(self._recording.reach)
            self._depth += 1
            self._set_mode(True)
        if region and self._fast is not None and self._fast.direct is not None:
            self._intercept(self._direct_op)
        elif region:
            self._push_mode()

    def _frame_post(self, name: str, mod: nn.Module, out: Any) -> None:
        frame = self._stack.pop()
        if frame.region:
            self._open = 0
            self._release()
            self._pop_mode()
            fast = self._fast  # a direct region counted the fused calls, the others every op
            if fast is not None and self._fast_i != (len(fast.direct) if fast.direct is not None else len(fast.ops)):
                self._replay_broken(frame.name, ())
            self._fast = None
        self._after_frame(frame)
        if (self._recording is not None and self._tracker is not None and frame.key is not None
                and self._recording.end(frame.key, len(self._tracker.cands))):
            self._release()
        if self._tracker is not None and (self._replay is None or self._open):
            self._tracker.label_output(frame.x, out, module=mod)
        changed = self._changes_input(frame, out)  # (before a forward's end forgets its plan or recording)
        if self._tracker is not None and name == "":
            self._tracker.finish()  # the end of a forward: report what was seen and not drawn, forget labels
            self._end_forward()
        if frame.pending:
            contrib = contribution(frame.x, out, frame.version) if changed else None
            for suffix, rec in frame.pending:
                self._emit(_joined(name, suffix), rec, mod, "generic", contrib, changed)

    def _follow_input(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Discovery: ``out`` is a frame's input, changed, when an op of :data:`CHANGES_INPUT` (a residual sum, a gate's
        product, a view) has that input, or a tensor already marked so, as an operand."""
        if not isinstance(out, torch.Tensor) or func_name(func) not in CHANGES_INPUT:
            return
        frames: set[Any] = set()  # call keys (name, n): unique within a forward, unlike ids of freed frames
        for t in (*args, *kwargs.values()):
            if not isinstance(t, torch.Tensor):
                continue
            hit = self._from_x.get(id(t))
            if hit is not None and hit[0]() is t:
                frames |= hit[1]
            frames.update(f.key for f in self._stack if f.x is t and f.key is not None)
        if frames:
            with contextlib.suppress(TypeError):
                self._from_x[id(out)] = (weakref.ref(out), frozenset(frames))

    def _changes_input(self, frame: Frame, out: Any) -> bool:
        """Whether the module's output is its input changed (then ‖out − x‖ / ‖x‖ is its contribution); an attention whose
        output joins a residual sum outside the module (every transformer block) has none. Replays take the plan's answer."""
        if self._replay is not None:
            return frame.key is not None and self._replay.residual.get(frame.key, False)
        hit = self._from_x.get(id(out)) if isinstance(out, torch.Tensor) else None
        changed = hit is not None and hit[0]() is out and frame.key in hit[1]
        if self._recording is not None and frame.key is not None:
            self._recording.residual[frame.key] = changed
        return changed

    # ---- lazy labelling (replay plans) -------------------------------------------------------------
    def _push_mode(self) -> None:
        if self._mode is not None and not self._pushed:
            self._mode.__enter__()
            self._pushed = True

    def _pop_mode(self) -> None:
        if self._mode is not None and self._pushed:
            self._mode.__exit__(None, None, None)
            self._pushed = False

    def _mode_on_top(self) -> bool:
        n = torch._C._len_torch_function_stack()
        return self._pushed and n > 0 and torch._C._get_function_stack_at(n - 1) is self._mode

    def _start_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A new top-level forward: drop frames left by an earlier exception; replay a plan or record one."""
        self._stack.clear()
        self._from_x.clear()
        self._release()  # an exception may have left a region open
        self._depth, self._hold, self._open = 0, None, 0
        self._set_mode(False)
        self._calls.clear()
        self._replay = self._recording = None
        if self._tracker is None or self._target is None:
            return
        self._push_mode()  # an exception may have left it off
        self._sig = signature(self._target, args, kwargs, self._structure) if self._mode_on_top() else None
        plan = PLANS.get(self._target, self._sig) if self._sig is not None else None
        if plan is not None:
            self._replay = plan
            self.replays += 1
            self._pop_mode()
            for _, t in tensor_args(args, kwargs):
                self._tracker.label_input(t, top=True)
        elif self._sig is not None:
            self._recording = Recording()

    def _end_forward(self) -> None:
        rec, self._recording = self._recording, None
        if self._replay is not None:
            self._replay = None
            self._push_mode()
        elif rec is not None and self._sig is not None and self._target is not None:
            plan = rec.plan()
            if plan is not None:
                PLANS.put(self._target, self._sig, plan)

    def _enter_region(self, key: tuple[str, int], name: str, found: list[tuple[Any, torch.Tensor]]) -> bool:
        """In a replay, entering a region (or a watched module the plan does not know) with these tensor arguments: watch
        ops, seed the labels."""
        plan = self._replay
        if plan is None or self._open or self._tracker is None:
            return False
        entry = plan.entries.get(key)
        if entry is None and (name not in self._watched or self._depth):
            return False
        self._open = 1  # the mode is pushed once the frame is on the stack
        self._fast, self._fast_i = plan.fast.get(key), 0
        if self._fast is not None and entry is not None:
            self._tracker.batch = entry[1]
            return True  # labels only at its fused ops
        if entry is not None and [(p, tuple(t.shape)) for p, t in found] == [(e[0], e[1]) for e in entry[0]]:
            for (_, t), (_, _, labels, followed) in zip(found, entry[0]):
                self._tracker.force(t, labels, followed)
            self._tracker.batch = entry[1]
            return True
        for _, t in found:  # another code path than the plan's: these tensors get no labels (nothing drawn from them)
            self._tracker.force(t, None, True)
        self._replay_broken(name, tuple(found[0][1].shape) if found else ())
        return True

    def _replay_broken(self, name: str, shape: tuple[int, ...]) -> None:
        """A replay met another code path than its plan's: say so, and trace the model again on its next forward."""
        self._seen(Seen(name, "replay", shape, "this call differs from the forward that traced the model's tensors (a data-dependent "
                        "branch?); its attention is not drawn on this forward, the next forward traces the model again"))
        if self._target is not None and self._sig is not None:
            PLANS.drop(self._target, self._sig)

    def _intercept(self, handler: intercept.Handler) -> None:
        """See this thread's ``F.scaled_dot_product_attention`` calls until :meth:`_release` (a fused-attention region)."""
        if not self._intercepting:
            intercept.hold(handler)
            self._intercepting = True

    def _release(self) -> None:
        if self._intercepting:
            intercept.release()
            self._intercepting = False

    def _direct_op(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A call of ``F.scaled_dot_product_attention`` in a direct fast region: it must be the plan's next one, with q and k
        of the planned shapes; then they get the planned labels and the tracker decides, as on any fused op."""
        fast, i = self._fast, self._fast_i
        self._fast_i = i + 1
        if fast is None or fast.direct is None or self._tracker is None or not self._stack:
            return
        q, k = fused_qk(args, kwargs)
        if i >= len(fast.direct) or not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or (
                tuple(q.shape), tuple(k.shape)) != fast.direct[i][2:]:
            self._fast = None
            self._replay_broken(self._stack[-1].name, ())
            return
        with torch._C.DisableTorchFunction():
            self._tracker.force(q, fast.direct[i][0], False)
            self._tracker.force(k, fast.direct[i][1], False)
            self._tracker.on_op(SDPA, args, kwargs, out, self._frame_for(args), False)

    def _fast_op(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """An op of a fast region: it must be the plan's next op; at a fused attention op, label q and k and decide."""
        fast, i = self._fast, self._fast_i
        self._fast_i = i + 1
        if fast is None or self._tracker is None:
            return
        if i >= len(fast.ops) or (fast.ops[i] is not func and fast.ops[i] != func):  # (method-wrappers are made per access)
            self._fast = None
            self._replay_broken(self._stack[-1].name, ())
            return
        ev = fast.events.get(i)
        if ev is not None:
            q, k = fused_qk(args, kwargs)
            self._tracker.force(q, ev[0], False)
            self._tracker.force(k, ev[1], False)
            self._tracker.on_op(func, args, kwargs, out, self._frame_for(args), False)

    def _after_frame(self, frame: Frame) -> None:
        """Leaving a frame: stop watching ops when no watched module runs and no fresh gate waits for its consumer."""
        if frame is self._hold:
            self._hold = None
            if self._recording is not None and frame.key is not None:
                self._recording.regions.add(frame.key)
        if frame.name in self._watched:
            self._depth -= 1
            # a gate or weights made here and not yet used: its consumer is usually the parent (``x * self.sa(x)``)
            if self._depth == 0 and self._hold is None and self._stack and self._tracker is not None and any(
                    not c.used and not c.reasons for c in self._tracker.cands[self._span_start:]):
                self._hold = self._stack[-1]
        if self._depth == 0 and self._hold is None:
            self._set_mode(False)

    def _frame_for(self, args: tuple[Any, ...]) -> Frame | None:
        """The module an op belongs to: the innermost call with a 4-D input that is not just a wrapper of the op."""
        arg = args[0] if args else None
        for f in reversed(self._stack):
            if f.x is not None and f.x is not arg:
                return f
        return self._stack[-1] if self._stack else None

    def _on_op(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if not self._stack or threading.get_ident() != self._thread:
            return
        if self._open and self._replay is not None and (self._fast is not None or self._fast_i):
            self._fast_op(func, args, kwargs, out)  # (after a mismatch _fast is None and the region's ops are skipped)
            return
        name = func_name(func) if self._recording is not None else ""
        if self._recording is not None and name in VALUE_READS:
            self._recording.valid = False  # Python read a value: the ops may depend on it (no plan)
        if not self._mode_on and func not in WATCHED:
            if self._tracker is not None and self._tracker.propagate_only(func, args, kwargs, out) and self._recording is not None:
                self._recording.valid = False
            return
        if func in WATCHED and not self._mode_on and self._recording is not None:
            self._recording.valid = False  # a grid op outside watched code: a replay would not see it
        if self._replay is None:
            self._follow_input(func, args, kwargs, out)
        in_adapted = any(f.adapted for f in self._stack)
        if func in WATCHED and isinstance(out, torch.Tensor):
            if self._recording is not None:
                self._recording.simple = False
            if in_adapted:
                return
            kind, rec = grid_record(func, args, kwargs, out)
            if kind == "affine_grid":
                self._grids[id(out)] = (out, rec)
                self._stack[-1].pending.append(("grid", rec))
                return
            grid = args[1] if len(args) > 1 else kwargs["grid"]
            known = self._grids.get(id(grid))
            if known is not None and known[0] is grid:
                known[1].input_hw = rec.input_hw
            elif rec is not None:
                self._stack[-1].pending.append(("grid", rec))
            return
        if self._tracker is not None:
            fused = False
            if self._recording is not None:
                fused = name in FUSED and not in_adapted
                self._recording.op(func, name, args, kwargs, self._tracker.get, fused)
            self._in_fused = fused
            try:
                self._tracker.on_op(func, args, kwargs, out, self._frame_for(args), in_adapted)
            finally:
                self._in_fused = False


def capture(model: nn.Module, generic: Generic = "auto") -> Capture:
    """Record the attention maps of ``model`` while the ``with`` block runs.

    Example:
        >>> with capture(model) as cap:
        ...     logits = model(x)
        >>> for name, rec in cap.records.items():
        ...     print(name, rec.kind)

    Args:
        model: The model (``torch.compile``/``DataParallel`` wrappers are unwrapped).
        generic: Generic discovery for unknown code: ``"auto"`` (default), ``"all"`` or ``"off"``.
    """
    return Capture(model, generic=generic)


__all__ = ["Capture", "capture", "contribution", "unwrap", "WATCHED"]


def _joined(module: str, suffix: str) -> str:
    """A generic record's name: the module that computes it, with a suffix for its kind where the module makes several."""
    if not suffix:
        return module or "model"
    return f"{module}.{suffix}" if module else suffix
