"""Token batches: which positions of a batch are real tokens, and how many were scanned.

A language-model batch in the Hugging Face convention is a dict with ``input_ids``
``(B, T)`` and an ``attention_mask`` ``(B, T)`` of 1 (a real token) and 0 (padding, on the
right or the left). Padding positions still run through the network; their activations
are not part of the text and must not enter the statistics. :class:`TokenMask` holds the
real positions of one batch and restricts an activation to them, when the activation's
leading dims are those of the mask:

* ``(B, T, ...)`` with the unit dim after them (``(B, T, U)`` of an FFN), or
* ``(B * T, ...)`` with the unit dim after it (OPT's decoder layer flattens its hidden
  states to ``(B * T, D)`` before ``fc1``),

giving ``(K, ...)`` with K the number of real tokens. An activation of any other shape
(``select`` returns None) is not restricted; the caller says so. So is a ``(B, T, ...)``
activation of a square batch (B == T) with padding: a sequence-first model's ``(T, B,
...)`` (FSMT) has the same shape. (A sequence-first model that flattens to ``(T * B,
...)`` cannot be told from OPT's ``(B * T, ...)``: scan such a model with mask=False.)

A shape that lines up is not enough when the model runs more than one sequence, or
reorders its tokens: :class:`MaskScopes` says which mask, if any, may restrict a site,
by where the site is in the model, so that a mask is never applied to activations of
another sequence (the rule is in its docstring):

* encoder-decoder models (T5, BART, Whisper, ``EncoderDecoderModel``: ``get_encoder()``
  and ``get_decoder()`` give two distinct submodules): the encoder's sites take the
  batch's ``attention_mask``, the decoder's ``decoder_attention_mask`` (the decoder's
  positions are not the encoder's, even when the lengths are equal), and are left
  unrestricted, and reported, when the batch has none;
* multimodal models (LLaVA, CLIP: ``get_encoder(modality="image")`` gives a tower): only
  the language model's sites (``get_decoder()``) take the text mask; a vision tower's
  ``(B, patches, U)`` lines up with it by shape whenever ``patches == T``;
* sites inside a mixture-of-experts block (a module path segment containing ``expert``
  or ``moe``, but for a ``shared_expert``, which runs on every token) are never
  restricted: their rows are the tokens routed to an expert, in the router's order (a
  top-1 MoE's ``(B * T, U)`` rows sorted by expert line up with the mask by shape but
  not by token).

A model of your own that runs a second sequence must say so, by defining
``get_encoder()``/``get_decoder()`` or by passing that sequence under ``decoder_*`` keys
(then, its parts unknown, no site is restricted); else every site whose shape lines up
takes the mask.

A generation step's mask (wider than ``input_ids`` by the KV-cached tokens) is cut to
its last columns, the new tokens' (:func:`batch_mask`).

:func:`batch_mask` finds the mask of a batch, :func:`batch_tokens` counts its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DECODER_PREFIX",
    "DEFAULT_MASK_KEY",
    "MaskScopes",
    "TokenMask",
    "batch_mask",
    "batch_tokens",
    "mask_key",
]

#: The batch key ``scan(mask="auto")`` reads the mask from (Hugging Face convention).
DEFAULT_MASK_KEY = "attention_mask"

#: An encoder-decoder model's decoder reads its mask from the key ``DECODER_PREFIX + key``
#: (``"decoder_attention_mask"``, Hugging Face convention); a batch with any key starting
#: so carries a second sequence.
DECODER_PREFIX = "decoder_"

#: Module path segments (lowercase substrings) that mark a mixture-of-experts block.
MOE_SEGMENTS = ("expert", "moe")


def mask_key(mask: str | bool) -> tuple[str | None, bool]:
    """``scan``'s ``mask`` argument -> (the batch key to read, whether the key is required):
    ``"auto"`` (or True) reads :data:`DEFAULT_MASK_KEY` where a batch has it, another str
    names a key every dict batch must have, False reads none."""
    if mask is False:
        return None, False
    if mask is True or mask == "auto":
        return DEFAULT_MASK_KEY, False
    if isinstance(mask, str) and mask:
        return mask, True
    raise ValueError(
        f"mask must be 'auto', False, or the name of the batch key holding the attention "
        f"mask, got {mask!r}"
    )


def batch_mask(
    kwargs: Mapping[str, Any], key: str | None, required: bool, prefix: str = ""
) -> Tensor | None:
    """The ``(B, T)`` bool mask (True: a real token) of a batch whose keyword arguments are
    ``kwargs`` (a dict batch; empty for tensor batches), or None without one.

    A mask wider than the batch's tokens (``prefix + "input_ids"`` ``(B, T)`` or
    ``prefix + "inputs_embeds"`` ``(B, T, D)``) is a generation step's: with a KV cache
    Hugging Face's mask covers the cached tokens and then the T new ones, so its last T
    columns are returned (the positions the batch runs).

    Raises:
        ValueError: ``required`` and a dict batch lacks ``key``; the mask is not a 2-d tensor
            (with ``required``; with "auto" such a mask, e.g. a 4-d additive one, is not
            read: None); a float mask holds values other than 0 and 1.
    """
    if key is None or not kwargs:
        return None
    value = kwargs.get(key)
    if value is None:
        if required:
            raise ValueError(
                f"mask={key!r}: a batch has no key {key!r} (its keys: {sorted(kwargs)}); "
                f"pass mask='auto' to read {DEFAULT_MASK_KEY!r} where present, or mask=False"
            )
        return None
    if not isinstance(value, Tensor) or value.dim() != 2:
        if required:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"mask={key!r}: batch[{key!r}] must be a (batch, tokens) tensor of 1 (token) "
                f"and 0 (padding), got {shape}"
            )
        return None
    if value.is_floating_point() and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(
            f"batch[{key!r}] holds values other than 0 and 1 (an additive mask?): pass the "
            f"(batch, tokens) 0/1 attention mask, or mask=False"
        )
    found = value if value.dtype == torch.bool else value != 0
    for name in ("input_ids", "inputs_embeds"):
        ids = kwargs.get(prefix + name)
        if isinstance(ids, Tensor) and ids.dim() >= 2 and ids.shape[0] == found.shape[0]:
            if ids.shape[1] < found.shape[1]:  # cached tokens first, then the batch's
                return found[:, found.shape[1] - ids.shape[1] :]
            break
    return found


def batch_tokens(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], mask: Tensor | None
) -> int | None:
    """Tokens a batch feeds the scan: the real ones of ``mask`` when given, else every
    position of ``input_ids`` (a dict batch) or of a 2-d integer tensor input (token ids,
    ``model(ids)``); None when the batch carries no tokens. Reads ``mask`` once (one
    device synchronisation when it is on a GPU)."""
    if mask is not None:
        return int(mask.sum())
    ids = kwargs.get("input_ids") if kwargs else (args[0] if args else None)
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex():
        return None
    if kwargs or ids.dim() == 2:
        return ids.numel()
    return None


class TokenMask:
    """The real tokens of one batch, and activations restricted to them.

    Args:
        mask: ``(B, T)`` bool, True at real tokens (:func:`batch_mask`), on any device.
        device: where the activations are (the scan's device).
        tokens: ``int(mask.sum())`` when already known (:func:`batch_tokens`).
    """

    __slots__ = ("batch", "index", "length", "padded", "tokens")

    def __init__(self, mask: Tensor, device: torch.device, tokens: int | None = None) -> None:
        self.batch, self.length = int(mask.shape[0]), int(mask.shape[1])
        self.tokens = int(mask.sum()) if tokens is None else tokens
        #: whether any position is padding (else :meth:`select` returns z itself)
        self.padded = self.tokens < mask.numel()
        #: ``(K,)`` flat indices of the real tokens in ``(B * T)`` order (when padded)
        self.index: Tensor | None = None
        if self.padded:
            flat = mask.reshape(-1)
            # on the mask's device (no sync for a CPU mask), then to the activations'
            self.index = flat.nonzero().squeeze(1).to(device, non_blocking=True)

    def select(self, z: Tensor, unit_dim: int) -> tuple[Tensor, int] | None:
        """``z`` at the real tokens and its unit dim there, or None when ``z``'s leading
        dims are not the mask's (see the module docstring).

        ``(B, T, *rest)`` with the unit dim in ``rest`` -> ``(K, *rest)``, but None for
        a square padded batch (B == T: a sequence-first model's ``(T, B, *rest)``, e.g.
        FSMT's, has the same shape); ``(B * T, *rest)`` likewise; without padding ``z``
        itself (no copy). The unit dim returned is non-negative."""
        ndim = z.dim()
        if ndim < 2:
            return None
        d = unit_dim % ndim
        shape = z.shape
        if ndim >= 3 and d >= 2 and shape[0] == self.batch and shape[1] == self.length:
            if self.index is None:
                return z, d
            if self.batch == self.length:  # (B, T, U) or a sequence-first (T, B, U)?
                return None
            flat = z.reshape(self.batch * self.length, *shape[2:])
            return flat.index_select(0, self.index), d - 1
        if d >= 1 and shape[0] == self.batch * self.length:
            if self.index is None:
                return z, d
            return z.index_select(0, self.index), d
        return None


class MaskScopes:
    """Which batch key's mask may restrict each site of ``model`` (scanned with mask key
    ``key``), by where the site is; the rule never applies a mask to activations that do
    not come from its sequence. Models name their parts as Hugging Face's do, with
    ``get_encoder()``, ``get_encoder(modality=...)`` and ``get_decoder()`` (a model of
    your own can define them); the parts of the model and of every module inside it (a
    wrapped model) are looked up once:

    1. A site inside a mixture-of-experts block's routed part (:func:`routed`: a segment
       of its module path contains one of :data:`MOE_SEGMENTS`, e.g.
       ``mlp.experts.act_fn``, ``block_sparse_moe``; a ``shared_expert`` is not
       routed): no mask (its rows are routed tokens in the router's order).
    2. Inside an encoder-decoder (a module whose ``get_encoder()`` and ``get_decoder()``
       are two proper submodules, neither inside the other: T5, BART, Whisper,
       ``EncoderDecoderModel``): a site in the encoder takes ``key``, in the decoder
       ``DECODER_PREFIX + key`` (``decoder_attention_mask``) when the batch has it, any
       other no mask.
    3. Inside a multimodal model (a module whose ``get_encoder(modality=m)``, m one of
       "image", "video", "audio", is a proper submodule: LLaVA's vision tower, CLIP's
       vision model): a site in its language model (``get_decoder()``) takes ``key``,
       any other (the towers, projectors, heads) no mask.
    4. Elsewhere (text models: decoder-only, encoder-only): ``key``; but if no
       encoder-decoder was found, a batch carrying a key that starts with
       :data:`DECODER_PREFIX` (a second sequence, of a model whose parts are unknown)
       restricts no site.

    Where 2 and 3 nest (a multimodal model whose language model is an encoder-decoder)
    the innermost part decides. A site with no mask for a batch that has one is left
    whole and reported by the caller; so is one whose activation does not line up
    (:meth:`TokenMask.select`).

    Args:
        model: the model scanned (its module names as the sites name them: plain names,
            wrapper segments dropped).
        key: the batch key of the (encoder's) mask.
    """

    def __init__(self, model: nn.Module, key: str) -> None:
        from deadrelu.graph import plain_name

        self.key = key
        self.decoder_key = DECODER_PREFIX + key
        #: whether an encoder-decoder was found (rule 2; else rule 4's guard holds)
        self.encoder_decoder = False
        #: {plain module path: the key its sites take (None: none)}, rules 2 and 3; the
        #: longest path containing a site decides (an inner part after its outer one)
        self.scopes: dict[str, str | None] = {}
        names = {id(m): plain_name(n) for n, m in model.named_modules()}
        for path, module in model.named_modules():
            here = plain_name(path)
            enc = _part(module, "get_encoder", names, here)
            dec = _part(module, "get_decoder", names, here)
            if enc is not None and dec is not None and not (_inside(enc, dec) or _inside(dec, enc)):
                self.encoder_decoder = True
                self.scopes.update({here: None, enc: key, dec: self.decoder_key})
            elif dec is not None and any(
                _part(module, "get_encoder", names, here, modality)
                for modality in ("image", "video", "audio")
            ):
                self.scopes.update({here: None, dec: key})
        self._keys: dict[str, str | None] = {}

    def site_key(self, site: str, module: str) -> str | None:
        """The batch key whose mask may restrict site ``site`` (made by or inside module
        ``module``, a plain module path), or None for none (cached per site)."""
        try:
            return self._keys[site]
        except KeyError:
            pass
        key: str | None = self.key
        if routed(module):
            key = None
        else:
            inner = max((p for p in self.scopes if _inside(module, p)), key=len, default=None)
            if inner is not None:
                key = self.scopes[inner]
        self._keys[site] = key
        return key

    def batch_masks(
        self,
        kwargs: Mapping[str, Any],
        mask: Tensor | None,
        device: torch.device,
        tokens: int | None,
    ) -> tuple[dict[str, TokenMask], bool] | None:
        """The masks of one batch (keyword arguments ``kwargs``; its ``key`` mask
        ``mask``, :func:`batch_mask`): ``({batch key: TokenMask}, whether any of them
        holds padding)``, or None when the batch has no mask at all. The dict lacks the
        keys whose sites are then left whole: the decoder's when the batch has no
        decoder mask, every key for a model that is not encoder-decoder fed a batch
        with a ``decoder_*`` key. ``tokens``: ``int(mask.sum())`` when known."""
        dec = None
        if self.encoder_decoder:
            dec = batch_mask(kwargs, self.decoder_key, False, DECODER_PREFIX)
        if mask is None and dec is None:
            return None
        masks: dict[str, TokenMask] = {}
        padded = False
        if mask is not None:
            main = TokenMask(mask, device, tokens)
            padded = main.padded
            if not self.encoder_decoder and any(k.startswith(DECODER_PREFIX) for k in kwargs):
                return masks, padded
            masks[self.key] = main
        if dec is not None:
            masks[self.decoder_key] = tm = TokenMask(dec, device)
            padded = padded or tm.padded
        return masks, padded


def routed(module: str) -> bool:
    """Whether module path ``module`` is inside a mixture-of-experts block's routed part:
    a segment contains one of :data:`MOE_SEGMENTS`, other than a shared expert's
    (``shared_expert``, ``shared_experts``: run on every token, in token order)."""
    for part in module.lower().split("."):
        if not part.startswith("shared_expert") and any(seg in part for seg in MOE_SEGMENTS):
            return True
    return False


def _part(
    module: nn.Module,
    method: str,
    names: Mapping[int, str],
    here: str,
    modality: str | None = None,
) -> str | None:
    """The plain path (in the scanned model) of the module ``module.<method>()`` (with
    ``modality=`` when given) returns, or None when ``module`` (at path ``here``) has no
    such method, it raises (no such part, or no ``modality`` argument), or returns
    ``module`` itself or no module of the model."""
    get = getattr(module, method, None)
    if not callable(get):
        return None
    try:
        part = get() if modality is None else get(modality=modality)
    except Exception:
        return None
    name = names.get(id(part)) if isinstance(part, nn.Module) else None
    return None if name is None or part is module or not _inside(name, here) else name


def _inside(module: str, part: str) -> bool:
    """Whether module path ``module`` is ``part`` or inside it (every path is inside the
    root, ``""``)."""
    return not part or module == part or module.startswith(part + ".")
