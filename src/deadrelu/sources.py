"""Models and data named by a string: what ``deadrelu scan MODEL --data DATA`` accepts.

Model specs (:func:`load_model`):

* ``torchvision:NAME`` (``torchvision:resnet18``): ``torchvision.models.get_model(NAME)``,
  random init; its default input shape and transforms from the weights' metadata (nothing
  is downloaded);
* ``timm:NAME`` (``timm:convnext_atto``): ``timm.create_model(NAME, pretrained=False)``;
* ``hf:DIR``: a local Hugging Face model directory (``save_pretrained``), loaded with
  ``local_files_only=True`` into the class of ``config.architectures`` (else ``AutoModel``),
  with its tokenizer when the directory has one;
* ``package.module:factory``: ``factory()`` must return an ``nn.Module`` (the current
  directory is importable, as with ``python -m``);
* a checkpoint file: ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
  ``torch.load(weights_only=True)``, or ``.safetensors``; a state dict goes into the
  architecture given as ``arch`` (a spec above). A file holding a pickled model (what
  ``torch.save(model)`` writes) is refused unless ``trust_pickle=True``: unpickling runs
  code from the file.

``weights=PATH`` loads a state dict (same file kinds) into any spec's model.

Data specs (:func:`load_data`), yielding batches :func:`deadrelu.scan.scan` takes:

* ``random`` or ``random:3x224x224``: N(0, 1) inputs of that per-sample shape (seeded);
  ``random`` alone is the model's expected input (token ids for ``hf:`` models);
* a directory: a torchvision ``ImageFolder`` with the model's default transforms;
* ``.pt`` (weights-only) or ``.npy`` (no pickle): a tensor ``(N, ...)`` (or, for ``.pt``,
  a dict of such tensors, e.g. ``input_ids``), cut into batches along dim 0;
* text, for an ``hf:`` model with a tokenizer: a ``.txt`` file (any other file too), a
  ``.jsonl`` file (one JSON object per line with a ``"text"`` field, the usual corpus
  dump), ``.gz`` compressed ones, or a directory of such files (read recursively in sorted
  order of their relative paths). Each ``.txt`` file and each ``.jsonl`` record is a
  document, tokenised as ``tokenizer(text)`` does (with the BOS/EOS it adds); documents
  are joined with the tokenizer's eos token between them where it has one (and does not
  put one there already, as OPT's ``</s>`` BOS does); the stream is cut into consecutive
  windows of ``seq_len`` tokens (the last, shorter one dropped unless the whole stream is
  shorter than a window), ``batch_size`` windows per batch, with an all-ones
  ``attention_mask``; for an encoder-decoder (T5, BART) the decoder reads the same
  windows (``decoder_input_ids``, ``decoder_attention_mask``; also for ``random``). The
  corpus is streamed: read and tokenised about
  :data:`TEXT_CHUNK_CHARS` characters at a time as batches are taken, never whole, so
  memory does not grow with its size (one line longer than that is read whole). A
  ``.txt`` file gives exactly the ids of tokenising the whole file at once: pieces are
  cut at line starts where the tokenisation is checked to be stable (see
  :func:`_text_ids`); a tokenizer whose tokens could span a line end in ways the check
  misses would be warned about in the log;
* ``package.module:loader_factory``: ``loader_factory()`` returns an iterable of batches.

Errors are :class:`SpecError` (one line naming the spec and the accepted forms) or
:class:`MissingExtraError` (an optional package is missing; names the extra to install).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import itertools
import json
import logging
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

__all__ = [
    "DATA_FORMS",
    "MODEL_FORMS",
    "LoadedModel",
    "MissingExtraError",
    "SpecError",
    "input_tensors",
    "load_data",
    "load_model",
    "read_state_dict",
]

MODEL_FORMS = (
    "torchvision:NAME, timm:NAME, hf:DIR (a local Hugging Face model directory), "
    "package.module:factory, or a checkpoint file (.pt/.pth/.bin/.ckpt with --arch, "
    ".safetensors with --arch)"
)
DATA_FORMS = (
    "random, random:CxHxW (e.g. random:3x224x224), an image folder, a .pt or .npy tensor "
    "file, text for hf: models (a .txt or .jsonl file with a 'text' field per line, "
    ".gz too, or a folder of them; streamed), or package.module:loader_factory"
)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEFAULT_IMAGE = (3, 224, 224)
log = logging.getLogger(__name__)


class SpecError(ValueError):
    """A model or data spec that cannot be used; the message is one line."""


class MissingExtraError(ImportError):
    """An optional package a spec needs is not installed; the message names the extra."""


def _need(module: str, extra: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"{spec!r} needs the package {module!r}, which is not installed: "
            f"pip install 'deadrelu[{extra}]'"
        ) from exc


def _torchvision(spec: str) -> Any:
    from deadrelu.zoo import import_torchvision

    try:
        return import_torchvision()
    except ImportError as exc:
        raise MissingExtraError(
            f"{spec!r} needs torchvision, which is not installed: pip install 'deadrelu[zoo]'"
        ) from exc


def _torchvision_if_installed() -> None:
    from deadrelu.zoo import import_torchvision

    with contextlib.suppress(ImportError):
        import_torchvision()


@dataclass
class LoadedModel:
    """A model built from a spec, with what its data needs.

    Attributes:
        model: the module, on the requested device and dtype, in eval mode.
        spec: the model spec as given.
        source: "torchvision", "timm", "hf", "factory" or "checkpoint".
        input_shape: one sample's input shape, e.g. ``(3, 224, 224)``, when known.
        transform: the image transform for an image folder (zoo models), else None.
        tokenizer: the Hugging Face tokenizer (``hf:`` with one saved), else None.
        vocab_size: the token vocabulary (``hf:``), else None.
        dtype: the floating dtype of the model's parameters.
    """

    model: nn.Module
    spec: str
    source: str
    input_shape: tuple[int, ...] | None = None
    transform: Callable[[Any], Any] | None = None
    tokenizer: Any = None
    vocab_size: int | None = None
    dtype: torch.dtype = torch.float32
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (CPU if none)."""
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            return t.device
        return torch.device("cpu")


# ---------------------------------------------------------------------- state dicts


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Read a checkpoint file without running code from it.

    ``.safetensors`` files give ``{name: tensor}``; ``.pt``/``.pth``/``.bin``/``.ckpt``
    files are read with ``torch.load(weights_only=True)`` (tensors, dicts, lists and
    numbers only). A file that needs full unpickling (``torch.save(model)``) raises
    :class:`SpecError` unless ``trust_pickle``, then it is unpickled (may return a module).
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if p.suffix == ".safetensors":
        st = _need("safetensors.torch", "zoo", str(path))
        return dict(st.load_file(str(p)))
    if p.suffix not in _CHECKPOINT_SUFFIXES:
        raise SpecError(
            f"checkpoint {str(path)!r}: unknown file kind {p.suffix!r}; accepted: "
            f"{', '.join(_CHECKPOINT_SUFFIXES)}, .safetensors"
        )
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise SpecError(
                f"{str(path)!r} holds pickled Python objects (e.g. a whole model saved with "
                "torch.save(model)), and unpickling runs code from the file: save the "
                "weights instead (torch.save(model.state_dict(), PATH), then pass --arch) "
                "or, if you trust the file, pass --trust-pickle"
            ) from exc
    return torch.load(p, map_location="cpu", weights_only=False)


def _tensor_dict(obj: Any) -> dict[str, Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return None


def _as_state_dict(obj: Any, path: str) -> dict[str, Tensor]:
    sd = _tensor_dict(obj)
    if sd is not None:
        return sd
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            sd = _tensor_dict(obj.get(key))
            if sd is not None:
                return sd
    raise SpecError(
        f"{path!r} holds no state dict ({type(obj).__name__}): expected {{name: tensor}}, "
        "or a dict with it under 'state_dict', 'model_state_dict' or 'model'"
    )


def _strip_prefix(sd: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Drop a wrapper prefix (``module.``, ``_orig_mod.``, Lightning's ``model.``) shared by
    every key when that makes the keys those of the model."""
    if set(sd) == expected or not sd:
        return sd
    first = next(iter(sd)).split(".", 1)[0] + "."
    if all(k.startswith(first) for k in sd):
        stripped = {k[len(first) :]: v for k, v in sd.items()}
        if set(stripped) <= expected or len(set(stripped) & expected) > len(set(sd) & expected):
            return _strip_prefix(stripped, expected)
    return sd


def _load_into(model: nn.Module, obj: Any, path: str) -> None:
    sd = _as_state_dict(obj, path)
    expected = set(model.state_dict())
    sd = _strip_prefix(sd, expected)
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise SpecError(
            f"the weights in {path!r} do not fit the architecture "
            f"({type(model).__name__}): {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); check --arch"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise SpecError(
            f"the weights in {path!r} do not fit the architecture "
            f"({type(model).__name__}): {' '.join(line.strip() for line in first[:3])}"
        ) from exc


# ---------------------------------------------------------------------- models


def _import_attr(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's own modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    if not hasattr(module, attr):
        raise SpecError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _torchvision_model(spec: str, name: str) -> LoadedModel:
    tv = _torchvision(spec)
    try:
        model = tv.models.get_model(name, weights=None)
    except ValueError as exc:
        known = tv.models.list_models()
        close = [m for m in known if name.lower() in m][:8]
        raise SpecError(
            f"{spec!r}: torchvision has no model {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models")
        ) from exc
    shape: tuple[int, ...] = _DEFAULT_IMAGE
    transform = None
    try:
        weights = tv.models.get_model_weights(name).DEFAULT
        transform = weights.transforms()
        crop = getattr(transform, "crop_size", None)
        if crop:
            shape = (3, int(crop[0]), int(crop[-1]))
    except (ValueError, AttributeError, KeyError):
        pass  # no weights enum: ImageNet defaults
    if transform is None:
        transforms = tv.transforms
        transform = transforms.Compose(
            [transforms.Resize(shape[1]), transforms.CenterCrop(shape[1:]), transforms.ToTensor()]
        )
    return LoadedModel(model, spec, "torchvision", shape, transform)


def _timm_model(spec: str, name: str) -> LoadedModel:
    _torchvision_if_installed()  # timm imports torchvision: through deadrelu.zoo first
    timm = _need("timm", "zoo", spec)
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise SpecError(f"{spec!r}: timm has no model {name!r} (see timm.list_models())") from exc
    cfg = timm.data.resolve_data_config({}, model=model)
    shape = tuple(int(s) for s in cfg.get("input_size", _DEFAULT_IMAGE))
    transform = timm.data.create_transform(**cfg)
    return LoadedModel(model, spec, "timm", shape, transform)


def _hf_model(spec: str, directory: str) -> LoadedModel:
    d = Path(directory).expanduser()
    if not d.is_dir() or not (d / "config.json").is_file():
        raise SpecError(
            f"{spec!r}: {directory!r} is not a Hugging Face model directory (no config.json): "
            "give the folder written by model.save_pretrained(DIR); nothing is downloaded"
        )
    _torchvision_if_installed()  # transformers imports torchvision when it is there
    transformers = _need("transformers", "hf", spec)
    config = transformers.AutoConfig.from_pretrained(d, local_files_only=True)
    cls = transformers.AutoModel
    for arch in getattr(config, "architectures", None) or []:
        if hasattr(transformers, arch):
            cls = getattr(transformers, arch)
            break
    try:
        model = cls.from_pretrained(d, local_files_only=True)
    except OSError as exc:
        raise SpecError(f"{spec!r}: cannot load the model from {directory!r}: {exc}") from exc
    tokenizer = None
    if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        tokenizer = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    vocab = getattr(config, "vocab_size", None)
    return LoadedModel(
        model, spec, "hf", None, tokenizer=tokenizer, vocab_size=int(vocab) if vocab else None
    )


def _factory_model(spec: str) -> LoadedModel:
    factory = _import_attr(spec, "model factory")
    if not callable(factory):
        raise SpecError(f"model factory {spec!r} is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    shape = getattr(model, "input_shape", None)
    return LoadedModel(model, spec, "factory", tuple(shape) if shape else None)


def _build(spec: str) -> LoadedModel:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        return _torchvision_model(spec, rest)
    if sep and prefix == "timm":
        return _timm_model(spec, rest)
    if sep and prefix == "hf":
        return _hf_model(spec, rest)
    if _FACTORY.match(spec):
        return _factory_model(spec)
    raise SpecError(f"unknown model spec {spec!r}; accepted: {MODEL_FORMS}")


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Build the model named by ``spec`` (see the module docstring), in eval mode.

    Args:
        spec: a model spec or a checkpoint file.
        weights: a state-dict file (``.pt``/``.pth``/``.bin``/``.ckpt``/``.safetensors``)
            loaded strictly into the model (a ``module.``/``model.`` prefix is dropped).
        arch: the architecture (a model spec) a checkpoint file's state dict goes into.
        trust_pickle: allow unpickling a checkpoint (runs code from the file).
        device: where to put the model.
        dtype: a floating dtype to cast the model to (e.g. ``torch.bfloat16``).

    Raises:
        SpecError: the spec, file or weights cannot be used (one line, names the forms).
        MissingExtraError: an optional package is missing (names the extra).
    """
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"device {str(device)!r} was asked for but CUDA is not available here (torch "
            f"{torch.__version__}): use --device cpu or a CUDA build of torch"
        )
    path = Path(spec)
    is_file = path.suffix in (*_CHECKPOINT_SUFFIXES, ".safetensors")
    if is_file:
        obj = read_state_dict(path, trust_pickle=trust_pickle)
        if isinstance(obj, nn.Module):
            if arch is not None:
                raise SpecError(f"{spec!r} holds a whole model: --arch is not used with it")
            loaded = LoadedModel(obj, spec, "checkpoint", getattr(obj, "input_shape", None))
        else:
            if arch is None:
                raise SpecError(
                    f"{spec!r} holds weights only: say which architecture they belong to "
                    f"with --arch (one of: {MODEL_FORMS.split(', or a checkpoint')[0]})"
                )
            loaded = _build(arch)
            _load_into(loaded.model, obj, spec)
            loaded.source = "checkpoint"
        if weights is not None:
            raise SpecError(f"{spec!r} is a checkpoint already: --weights is not used with it")
    else:
        if arch is not None:
            raise SpecError(f"--arch is for checkpoint files; {spec!r} names the model already")
        loaded = _build(spec)
        if weights is not None:
            if loaded.source == "hf":
                raise SpecError(f"{spec!r}: an hf: directory carries its weights; drop --weights")
            _load_into(
                loaded.model, read_state_dict(weights, trust_pickle=trust_pickle), str(weights)
            )
    loaded.model.eval()
    loaded.model.to(device)
    if dtype is not None:
        loaded.model.to(dtype)
    loaded.dtype = next(
        (p.dtype for p in loaded.model.parameters() if p.is_floating_point()), torch.float32
    )
    return loaded


# ---------------------------------------------------------------------- data


def _parse_shape(spec: str, text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise SpecError(
            f"data spec {spec!r}: the shape must be positive integers joined by 'x', "
            "e.g. random:3x224x224"
        )
    return shape


def _random(
    loaded: LoadedModel, spec: str, shape_text: str, batches: int, batch_size: int, seq_len: int
) -> Iterator[Any]:
    gen = torch.Generator().manual_seed(0)
    if not shape_text and loaded.source == "hf":
        if not loaded.vocab_size:
            raise SpecError(f"{loaded.spec!r} has no vocab_size in its config: pass --data")
        for _ in range(batches):
            ids = torch.randint(loaded.vocab_size, (batch_size, seq_len), generator=gen)
            yield {"input_ids": ids}
        return
    if shape_text:
        shape = _parse_shape(spec, shape_text)
    elif loaded.input_shape:
        shape = tuple(loaded.input_shape)
    else:
        raise SpecError(
            f"data spec {spec!r}: the input shape of {loaded.spec!r} is not known; give it, "
            "e.g. random:3x224x224 (or random:784)"
        )
    for _ in range(batches):
        yield torch.randn((batch_size, *shape), generator=gen).to(loaded.dtype)


def _split_rows(obj: Any, spec: str, batch_size: int, batches: int) -> Iterator[Any]:
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Tensor):
        obj = obj[0]  # (inputs, targets)
    if isinstance(obj, Tensor):
        if obj.dim() == 0:
            raise SpecError(f"data file {spec!r} holds a scalar, not a batch (N, ...)")
        for i, start in enumerate(range(0, obj.shape[0], batch_size)):
            if i >= batches:
                return
            yield obj[start : start + batch_size]
        return
    tensors = _tensor_dict(obj)
    if tensors is None:
        raise SpecError(
            f"data file {spec!r} holds {type(obj).__name__}: expected a tensor (N, ...), "
            "an (inputs, targets) pair, or a dict of tensors (N, ...) such as input_ids"
        )
    n = min(int(t.shape[0]) for t in tensors.values())
    for i, start in enumerate(range(0, n, batch_size)):
        if i >= batches:
            return
        yield {k: v[start : start + batch_size] for k, v in tensors.items()}


def _cast(batches: Iterable[Any], dtype: torch.dtype) -> Iterator[Any]:
    for b in batches:
        if isinstance(b, Tensor) and b.is_floating_point():
            yield b.to(dtype)
        elif isinstance(b, (tuple, list)) and b and isinstance(b[0], Tensor):
            first = b[0].to(dtype) if b[0].is_floating_point() else b[0]
            yield type(b)([first, *b[1:]])
        elif isinstance(b, dict):  # keyword inputs: their floating tensors (not token ids)
            yield {k: _cast_one(v, dtype) for k, v in b.items()}
        else:
            yield b


def _cast_one(v: Any, dtype: torch.dtype) -> Any:
    return v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v


# ---------------------------------------------------------------------- text corpora

#: File kinds read as text corpora (``.gz``: gzip-compressed).
TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
#: Characters of text read before one (batched) tokenizer call, about 64k tokens: with the
#: token windows not yet yielded, this bounds the memory of a text source (the tokenizer
#: needs a few hundred bytes per character), whatever the corpus size.
TEXT_CHUNK_CHARS = 1 << 18
#: Characters of ``.jsonl`` documents tokenised by one (batched) tokenizer call.
JSONL_CHUNK_CHARS = 1 << 18


def _is_text_file(path: Path) -> bool:
    return path.name.endswith(TEXT_SUFFIXES)


def text_corpus(spec: str | None, loaded: LoadedModel) -> list[Path] | None:
    """The files of ``spec`` when it names a text corpus for ``loaded``, else None.

    A text corpus is a ``.txt``/``.jsonl`` file (``.gz`` too), any other existing file
    that is not a tensor file, or (for an ``hf:`` model) a directory holding such files,
    read recursively in sorted order of their relative paths (hidden files skipped).
    """
    if not spec or spec == "random" or spec.startswith("random:"):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        if loaded.source != "hf":
            return None  # an image folder
        found = {
            p.relative_to(path).as_posix(): p
            for p in path.rglob("*")
            if p.is_file() and _is_text_file(p)
        }
        files = [
            found[k] for k in sorted(found) if not any(s.startswith(".") for s in k.split("/"))
        ]
        return files or None
    if path.is_file() and path.suffix not in (".pt", ".pth", ".npy"):
        return [path]
    return None


def _open_text(path: Path) -> IO[str]:
    """``path`` opened for reading text line by line (UTF-8, undecodable bytes replaced,
    newlines translated to ``\\n`` as :meth:`Path.read_text` does)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` without special tokens (no too-long warning: the ids are
    cut into windows)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids ``tokenizer`` puts before and after a text's own (BOS, EOS, CLS/SEP)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", verbose=False)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _separator(tokenizer: Any, frame: tuple[list[int], list[int]]) -> list[int]:
    """The ids between two documents: the eos token, unless the tokenizer has none or its
    frame already puts it there (an EOS it appends, OPT's ``</s>`` BOS)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pre, post = frame
    if eos is None or pre[:1] == [eos] or post[-1:] == [eos]:
        return []
    return [int(eos)]


def _last_line_start(text: str, end: int) -> int:
    """The start of the line that ends at ``end`` (just after its ``\\n``), or of the one
    running to ``end``."""
    return text.rfind("\n", 0, max(end - 1, 0)) + 1


def _line_end(text: str, start: int) -> int:
    """The end of the line starting at ``start`` (after its ``\\n``, or the text's end)."""
    end = text.find("\n", start)
    return len(text) if end < 0 else end + 1


def _cuts(text: str, step: int) -> list[int]:
    """Line starts 0 < C_1 < ... < C_k in ``text``, about ``step`` characters apart, each
    beginning a complete non-blank line (so a whitespace run before a cut ends in that
    line) after a line with no trailing blank (byte-level BPEs merge ``" \\n"`` at the end
    of a text: such a cut would prove unstable); the last one as late as possible."""

    def good(c: int) -> bool:
        end = _line_end(text, c)
        return (
            text.endswith("\n", c, end)
            and bool(text[c:end].strip())
            and (c < 2 or text[c - 2] not in " \t")
        )

    out: list[int] = []
    walked = 0  # lines before this were looked at already
    for p in range(step, len(text), step):
        c = max(text.rfind("\n", 0, p) + 1, walked)  # the start of the line holding p
        while 0 < c < len(text) and not good(c):
            c = _line_end(text, c)
        walked = c
        if 0 < c < len(text) and (not out or c > out[-1]):
            out.append(c)
    c = _last_line_start(text, len(text))
    while c > 0 and not good(c):
        c = _last_line_start(text, c)
    if c > 0 and (not out or c > out[-1]):
        out.append(c)
    return out


def _pieces(
    tokenizer: Any, text: str, ctx: str, ctx_ids: list[int], cuts: list[int]
) -> tuple[list[list[int]], set[int], list[int]]:
    """The ids of ``text[0:C_1]``, ``text[C_1:C_2]``, ... (no special tokens), from one
    batched tokenizer call, with the cuts that proved unstable.

    Piece i is tokenised after a context (``ctx`` for the first, the line before its
    start otherwise; those ids are dropped) and followed by the (non-blank) line at its
    end cut C, whose ids are dropped too. A cut C is stable when the line before C,
    tokenised alone, is a prefix of it followed by the line at C, the rest of those ids
    (the line at C after its predecessor) end the piece before C, and the piece after C
    begins with the ids of its context; a cut next to an unknown-token id is unstable
    (the same ids may then stand for other text). Returns the pieces, the unstable cuts,
    and the ids of the line before the last cut.
    """
    starts = [0, *cuts[:-1]]
    before = [text[_last_line_start(text, c) : c] for c in cuts]  # the line before each cut
    at = [text[c : _line_end(text, c)] for c in cuts]  # the line at each cut
    inputs = [
        (ctx if i == 0 else before[i - 1]) + text[s:e] + at[i]
        for i, (s, e) in enumerate(zip(starts, cuts, strict=True))
    ]
    k = len(cuts)
    encoded = tokenizer(
        inputs + before + [b + a for b, a in zip(before, at, strict=True)],
        add_special_tokens=False,
        verbose=False,
    )["input_ids"]
    ids = [list(x) for x in encoded]
    pieces, before_ids, after_ids = ids[:k], ids[k : 2 * k], ids[2 * k :]
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[list[int]] = []
    bad: set[int] = set()
    for i, full in enumerate(pieces):
        pre = ctx_ids if i == 0 else before_ids[i - 1]
        if full[: len(pre)] != pre:
            if i == 0:
                log.warning(_BORDER_WARNING, getattr(tokenizer, "name_or_path", ""))
            else:
                bad.add(starts[i])
        lead, after = before_ids[i], after_ids[i]
        tail = after[len(lead) :]
        if (
            after[: len(lead)] != lead
            or not tail
            or (unk is not None and unk in (*lead, tail[0]))  # equal ids, other text
            or len(full) - len(tail) < len(pre)
            or full[len(full) - len(tail) :] != tail
        ):
            bad.add(cuts[i])
        out.append(full[len(pre) : len(full) - len(tail)])
    return out, bad, before_ids[-1]


def _text_ids(
    tokenizer: Any, lines: Iterable[str], chunk_chars: int, piece_chars: int | None = None
) -> Iterator[list[int]]:
    """The token ids (no special tokens) of one text read line by line, in pieces whose
    concatenation equals ``_encode(tokenizer, whole_text)``.

    Lines are gathered until ``chunk_chars`` characters, cut at line starts about
    ``piece_chars`` (default ``chunk_chars // 16``) apart (:func:`_cuts`), and the pieces
    are tokenised by one batched call (the fast tokenizers' threads), each preceded by the
    line before it as context (whose ids are dropped: a tokenizer that treats the start of
    a text specially, as SentencePiece's "first" ``▁``, then sees the piece mid-text). A
    cut is kept only when it is stable (:func:`_pieces`); unstable ones are dropped and
    the pieces tokenised again. Text after the last cut is carried to the next chunk;
    a chunk with no stable cut is carried whole and twice as much text read.
    """
    step = piece_chars or max(1, chunk_chars // 16)
    ctx: str = ""  # the line before the last cut
    ctx_ids: list[int] = []  # its ids, tokenised alone
    pending = ""  # text after the last cut, not yet tokenised
    target = chunk_chars
    it = iter(lines)
    while True:
        parts, size, eof = [pending], len(pending), False
        while size < target:
            line = next(it, None)
            if line is None:
                eof = True
                break
            parts.append(line)
            size += len(line)
        text = "".join(parts)
        if eof:
            ids = _encode(tokenizer, ctx + text)
            if ids[: len(ctx_ids)] != ctx_ids:
                log.warning(_BORDER_WARNING, getattr(tokenizer, "name_or_path", ""))
            yield ids[len(ctx_ids) :]
            return
        cuts = _cuts(text, step)
        while cuts:
            pieces, bad, last_ids = _pieces(tokenizer, text, ctx, ctx_ids, cuts)
            if not bad:
                break
            cuts = [c for c in cuts if c not in bad]
        if not cuts:
            pending, target = text, target * 2
            continue
        yield from pieces
        last = cuts[-1]
        ctx, ctx_ids = text[_last_line_start(text, last) : last], last_ids
        pending, target = text[last:], chunk_chars


_BORDER_WARNING = (
    "tokenizer %s: the ids at a chunk border of the text differ from those of the whole "
    "text (a tokenizer whose tokens span lines); the token windows near it may differ"
)


def _jsonl_texts(path: Path, lines: Iterable[str]) -> Iterator[str]:
    """The ``"text"`` of each JSON object of a ``.jsonl`` file (blank lines skipped)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(
                f"{str(path)!r} line {number} is not JSON ({exc.msg}): a .jsonl corpus holds "
                'one JSON object per line, e.g. {"text": "..."}'
            ) from exc
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise SpecError(
                f"{str(path)!r} line {number} has no string field 'text': a .jsonl corpus "
                'holds one JSON object per line, e.g. {"text": "..."}'
            )
        yield text


def corpus_ids(
    tokenizer: Any,
    files: Sequence[Path],
    *,
    chunk_chars: int | None = None,
) -> Iterator[list[int]]:
    """The token ids of a text corpus, in pieces, read lazily (see :func:`load_data`).

    Every ``.txt`` file and every ``.jsonl`` record is a document, tokenised as
    ``tokenizer(text)`` does (with the BOS/EOS it adds); two documents are separated by
    the tokenizer's eos token unless it has none or already puts one there. A ``.txt``
    file is read ``chunk_chars`` characters at a time (default :data:`TEXT_CHUNK_CHARS`)
    and its ids equal those of the whole file at once (:func:`_text_ids`).
    """
    chunk = chunk_chars or TEXT_CHUNK_CHARS
    frame = _frame(tokenizer)
    pre, post = frame
    sep = _separator(tokenizer, frame)
    first = True
    for path in files:
        with _open_text(path) as f:
            if not path.name.endswith((".jsonl", ".jsonl.gz")):
                yield (sep if not first else []) + pre
                first = False
                yield from _text_ids(tokenizer, f, chunk)
                yield post
                continue
            texts = (t for t in _jsonl_texts(path, f) if t)
            while True:
                group, size = [], 0
                for text in texts:
                    group.append(text)
                    size += len(text)
                    if size >= (chunk_chars or JSONL_CHUNK_CHARS):
                        break
                if not group:
                    break
                encoded = tokenizer(group, verbose=False)["input_ids"]
                for ids in encoded:
                    yield (sep if not first else []) + list(ids)
                    first = False


def _token_batches(
    pieces: Iterable[list[int]], spec: str, batches: int, batch_size: int, seq_len: int
) -> Iterator[dict[str, Tensor]]:
    """Batches ``{"input_ids": (B, T), "attention_mask": ones (B, T)}`` of consecutive
    ``seq_len``-token windows of the ids in ``pieces``: full batches of ``batch_size``
    windows, then one of the windows left; the last ``< seq_len`` ids are dropped, unless
    the whole stream is shorter than one window (then it is one window). At most
    ``batches`` batches; nothing is read past the last batch yielded."""
    step = batch_size * seq_len
    held: list[Tensor] = []  # ids not yet in a batch (joined once they fill one)
    count = 0
    done = 0
    for piece in pieces:
        if not piece:
            continue
        held.append(torch.tensor(piece, dtype=torch.int64))
        count += len(piece)
        if count < step:
            continue
        ids = torch.cat(held)
        full = count // step
        for i in range(full):
            w = ids[i * step : (i + 1) * step].reshape(batch_size, seq_len).clone()
            yield {"input_ids": w, "attention_mask": torch.ones_like(w)}
            done += 1
            if done >= batches:
                return
        held, count = [ids[full * step :].clone()], count - full * step
    left = torch.cat(held) if held else torch.empty(0, dtype=torch.int64)
    if done == 0 and left.numel() == 0:
        raise SpecError(f"text data {spec!r} gives no tokens")
    rows = left.numel() // seq_len
    if rows or done == 0:
        w = left[: rows * seq_len].reshape(rows, seq_len) if rows else left[None]
        yield {"input_ids": w, "attention_mask": torch.ones_like(w)}


def _text(
    loaded: LoadedModel,
    spec: str,
    files: Sequence[Path],
    batches: int,
    batch_size: int,
    seq_len: int,
) -> Iterator[Any]:
    """The batches of a text corpus (checked now, read lazily as they are taken)."""
    if loaded.source != "hf":
        raise SpecError(
            f"data {spec!r} is read as text, which needs an hf: model with a tokenizer; "
            f"for {loaded.spec!r} give one of: {DATA_FORMS}"
        )
    if loaded.tokenizer is None:
        raise SpecError(
            f"{loaded.spec!r} has no tokenizer (no tokenizer.json or tokenizer_config.json in "
            f"the directory), so the text {spec!r} cannot be tokenised: save one there "
            "with tokenizer.save_pretrained(DIR), or give token ids as a .pt file "
            "({'input_ids': (N, T)}) or random"
        )
    pieces = corpus_ids(loaded.tokenizer, files)
    return _token_batches(pieces, spec, batches, batch_size, seq_len)


def _encoder_decoder(loaded: LoadedModel) -> bool:
    """Whether ``loaded`` is a Hugging Face encoder-decoder (T5, BART, ...): its forward
    needs decoder inputs as well."""
    config = getattr(loaded.model, "config", None)
    return loaded.source == "hf" and bool(getattr(config, "is_encoder_decoder", False))


def _teacher_forced(batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Token batches for an encoder-decoder: the decoder reads the same windows as the
    encoder (``decoder_input_ids``, and ``decoder_attention_mask`` from the mask), so both
    halves' neurons see the corpus; the tokens counted are the encoder's."""
    for b in batches:
        extra = {"decoder_input_ids": b["input_ids"]}
        if "attention_mask" in b:
            extra["decoder_attention_mask"] = b["attention_mask"]
        yield {**b, **extra}


def load_data(
    spec: str | None,
    loaded: LoadedModel,
    *,
    batches: int = 8,
    batch_size: int = 16,
    seq_len: int = 128,
) -> Iterable[Any]:
    """The batches named by ``spec`` for ``loaded`` (see the module docstring).

    Args:
        spec: a data spec; None is ``random`` (the model's expected input).
        loaded: the model the data is for (input shape, transforms, tokenizer, dtype).
        batches: at most this many batches (all specs).
        batch_size: samples per batch (not for ``loader_factory``, which batches itself).
        seq_len: tokens per sequence (text files and random token ids).

    Returns:
        An iterable of batches (tensors, ``(x, y)`` pairs or dicts of keyword arguments);
        for a text corpus a generator that reads and tokenises the text as batches are
        taken (it has no ``len``; iterate it once).

    Raises:
        SpecError: the spec or file cannot be used (one line, names the accepted forms).
        MissingExtraError: an optional package is missing.
    """
    if batches < 1 or batch_size < 1 or seq_len < 1:
        raise SpecError(
            f"batches, batch size and sequence length must be >= 1 "
            f"(got {batches}, {batch_size}, {seq_len})"
        )
    spec = spec or "random"
    if spec == "random" or spec.startswith("random:"):
        shape_text = spec.partition(":")[2]
        out = _random(loaded, spec, shape_text, batches, batch_size, seq_len)
        return list(_teacher_forced(out) if _encoder_decoder(loaded) and not shape_text else out)
    path = Path(spec).expanduser()
    files = text_corpus(spec, loaded)
    if files is not None:
        text = _text(loaded, spec, files, batches, batch_size, seq_len)
        return _teacher_forced(text) if _encoder_decoder(loaded) else text
    if path.is_dir():
        tv = _torchvision(spec)
        if loaded.transform is None and loaded.input_shape is None:
            raise SpecError(
                f"image folder {spec!r}: {loaded.spec!r} has no default transforms; use a "
                "torchvision: or timm: model, or a loader factory"
            )
        transform = loaded.transform
        if transform is None:
            t = tv.transforms
            side = loaded.input_shape[-2:] if loaded.input_shape else (224, 224)
            transform = t.Compose([t.Resize(side), t.ToTensor()])
        try:
            dataset = tv.datasets.ImageFolder(str(path), transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:
            raise SpecError(f"image folder {spec!r}: {exc}") from exc
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        return _cast(itertools.islice(loader, batches), loaded.dtype)
    if path.suffix in (".pt", ".pth"):
        if not path.is_file():
            raise SpecError(f"data file {spec!r} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise SpecError(
                f"data file {spec!r} holds pickled Python objects; save plain tensors "
                "(torch.save(x, PATH) with a tensor or a dict of tensors)"
            ) from exc
        return list(_cast(_split_rows(obj, spec, batch_size, batches), loaded.dtype))
    if path.suffix == ".npy":
        import numpy as np

        if not path.is_file():
            raise SpecError(f"data file {spec!r} does not exist")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise SpecError(f"data file {spec!r}: {exc}") from exc
        rows = _split_rows(torch.from_numpy(array), spec, batch_size, batches)
        return list(_cast(rows, loaded.dtype))
    if _FACTORY.match(spec):
        factory = _import_attr(spec, "data loader factory")
        if not callable(factory):
            raise SpecError(f"data loader factory {spec!r} is not callable")
        data = factory()
        if not isinstance(data, Iterable):
            raise SpecError(
                f"data loader factory {spec!r} returned {type(data).__name__}, not an iterable "
                "of batches"
            )
        return _cast(itertools.islice(data, batches), loaded.dtype)
    raise SpecError(f"unknown data spec {spec!r} (no such file or folder); accepted: {DATA_FORMS}")


def input_tensors(batches: Iterable[Any]) -> Iterator[Tensor]:
    """The input tensor of each batch (a tensor, the first item of a pair); for a box.

    Raises:
        SpecError: a batch is a dict (keyword inputs have no single input tensor).
    """
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, Tensor):
            raise SpecError(
                f"a box needs one input tensor per batch, got {type(x).__name__} (token "
                "ids or keyword inputs cannot bound a box): give --box lo,hi with a shape"
            )
        yield x
