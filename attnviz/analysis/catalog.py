"""The models an application offers: loaded lazily, a few kept in memory, unavailable ones explained."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .outputs import Postprocess


@dataclass
class Entry:
    """One model the app offers.

    Attributes:
        name: Key and dropdown value.
        available: Whether it can be loaded here.
        reason: Why not (and how to get it) when unavailable.
        loader: Builds the model (eval mode; ``model.card`` optional).
        source: Where it comes from (attnviz zoo, timm, torchvision, mmsegmentation, user).
        task: ``"classification"``, ``"segmentation"`` or ``""`` (found out on the first forward).
        trained_on: What the model was trained on, in a few words (shown beside its results).
        postprocess: Turns the model's output into logits, for outputs attnviz cannot read itself.
        downloadable: Whether its weights can be fetched on demand (then ``reason`` says so).
    """

    name: str
    available: bool
    reason: str = ""
    loader: Callable[[], nn.Module] | None = None
    source: str = "user"
    task: str = ""
    trained_on: str = ""
    postprocess: Postprocess | None = None
    downloadable: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class Catalog:
    """Models by name, loaded lazily and kept (at most ``max_loaded`` at a time)."""

    def __init__(self, entries: list[Entry], device: torch.device, max_loaded: int = 4) -> None:
        if not entries:
            raise ValueError("the app needs at least one model")
        self.entries = {e.name: e for e in entries}
        self.device = device
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, device: torch.device, extra: Mapping[str, nn.Module | Callable[[], nn.Module]] | None = None,
                      include_registry: bool = True, postprocess: Mapping[str, Postprocess] | None = None) -> Catalog:
        """The registry's models (zoo, ImageNet, published segmentation), plus ``extra`` user models."""
        entries: list[Entry] = []
        for name, obj in (extra or {}).items():
            loader = (lambda o=obj: o) if isinstance(obj, nn.Module) else obj
            entries.append(Entry(name, True, loader=loader, source="user", postprocess=(postprocess or {}).get(name)))
        if include_registry:
            from ..models import available, load_pretrained

            for info in available():
                entries.append(Entry(info.name, info.available, info.reason, (lambda n=info.name: load_pretrained(n)), info.source,
                                     task=info.task, trained_on=info.trained_on, downloadable=info.downloadable))
        return cls(entries, device)

    def choices(self, task: str | None = None) -> list[tuple[str, str]]:
        """(label, value) pairs for a dropdown: available models, then those downloaded on first use."""
        out = []
        for e in sorted(self.entries.values(), key=lambda e: not e.available):
            if not (e.available or e.downloadable) or (task and e.task and e.task != task):
                continue
            kind = f", {e.task}" if e.task else ""
            extra = "" if e.available else ", downloads on first use"
            out.append((f"{e.name} ({e.source}{kind}{extra})", e.name))
        return out

    def available_names(self) -> list[str]:
        """Names of the models that can be loaded here."""
        return [n for n, e in self.entries.items() if e.available]

    def default(self) -> str:
        """The first available user model, else a CCNet / Non-Local model, else the first available."""
        ok = self.available_names()
        for e in self.entries.values():
            if e.available and e.source == "user":
                return e.name
        for name in ("ccnet_r50_d8_cityscapes", "ccnet_seg", "ccnet_resnet", "nonlocal_resnet"):
            if name in ok:
                return name
        return ok[0] if ok else next(iter(self.entries))

    def unavailable_markdown(self) -> str:
        """A list of the models that cannot be loaded, with the reason and how to get them."""
        lines = [f"- **{e.name}**: {e.reason}" for e in self.entries.values() if not e.available and not e.downloadable]
        lines += [f"- **{e.name}** (downloads when first chosen): {e.reason}" for e in self.entries.values() if not e.available and e.downloadable]
        return "\n".join(lines) if lines else "All listed models are available."

    def entry(self, name: object) -> Entry:
        """The entry of ``name``, with a message naming the valid models when it is unknown."""
        if not isinstance(name, str) or not name:
            raise UserError(f"model must be the name of a model, got {name!r}. Choose one of: {', '.join(self.available_names())}.")
        e = self.entries.get(name)
        if e is None:
            from ..models.mmseg import near_miss, resolve

            alias = resolve(name)  # mmsegmentation's method and config names
            if alias is not None and alias in self.entries:
                return self.entries[alias]
            hint = near_miss(name)
            raise UserError(hint or f"Unknown model {name!r}. Choose one of: {', '.join(self.available_names())}.")
        return e

    def get(self, name: str, progress: Callable[[int, int], None] | None = None) -> nn.Module:
        """The loaded model (eval mode, on the device); a downloadable one is fetched first (``progress(done, total)``)."""
        e = self.entry(name)
        name = e.name  # an alias (mmsegmentation's names) loads the entry it names
        if not e.available and e.downloadable:
            from ..models.hub import DownloadError
            from ..models.registry import download

            try:
                download(name, progress=progress or False)
            except DownloadError as err:
                raise UserError(str(err)) from None
            e.available, e.reason, e.downloadable = True, "", False
        if not e.available or e.loader is None:
            raise UserError(f"{name} is not available here: {e.reason}")
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            try:
                model = e.loader().eval().to(self.device)
            except Exception as err:  # a broken checkpoint must not take the app down
                raise UserError(f"{name} could not be loaded: {type(err).__name__}: {err}") from err
            self._loaded[name] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model
