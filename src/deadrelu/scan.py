"""One pass of a model over data: per-unit statistics of every activation, as a Report.

:func:`scan` attaches :mod:`deadrelu.capture` to the model, runs it under
``torch.no_grad()`` over the batches, reduces every activation call into a
:class:`~deadrelu.stats.UnitStats` on the activation's device, and returns a
:class:`~deadrelu.report.Report`. The model is put in **eval mode** by default (dropout
off, BatchNorm on running statistics: the network as it is used), or left as it is with
``keep_mode=True``; either way every module's ``training`` flag is restored afterwards and
every hook is removed, also when forward raises.

``data`` and its batches are read by the rules of :mod:`deadrelu.batches` (a tensor, an
``(inputs, targets)`` tuple, a dict of keyword arguments; any iterable of them, one batch,
or a callable). Tensors in a batch are moved to ``device`` (default: the device of the
model's first parameter or buffer, else CPU); the model itself is not moved. A batch whose
input has size 0 in its first dim is skipped.

**Token streams** (Hugging Face causal LMs): with dict batches carrying an
``attention_mask`` (``mask="auto"``), padding positions are excluded from every site whose
activation lines up with the mask (:mod:`deadrelu.tokens`: ``(B, T, U)``, or OPT's
flattened ``(B * T, U)``); the tokens scanned are counted (``report.meta["tokens"]``,
``max_tokens``, tokens/s in the progress bar). Models in bfloat16/float16 are reduced in
float32 per batch and accumulated in float64 (:mod:`deadrelu.stats`). A long scan can
keep a checkpoint and resume after a crash (:mod:`deadrelu.scan_state`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deadrelu import activations, classify
from deadrelu.batches import (
    Batch,
    count_batches,
    iter_batches,
    model_device,
    require_materialised,
    split_batch,
    to_device,
)
from deadrelu.capture import (
    Site,
    UnitDim,
    attach,
    known_names,
    unrecognised_message,
    warn_unrecognised,
)
from deadrelu.report import Report
from deadrelu.scan_state import ScanState, check_fingerprint, checkpoint_path, fingerprint
from deadrelu.stats import (
    KERNEL_CHOICES,
    Detail,
    KernelChoice,
    KernelTrial,
    UnitStats,
    all_reduce_many,
    default_group,
    detail_level,
    fused_available,
    release_scratch,
)
from deadrelu.tokens import MaskScopes, TokenMask, batch_mask, batch_tokens, mask_key

__all__ = ["Batch", "scan"]

log = logging.getLogger(__name__)


#: ``kernel="auto"`` lets the ``torch.compile``-d kernel compete (be compiled, then timed
#: against the others) after the first batch when the rest of the scan is projected
#: (first batch's time x batches left) to take at least this long; before that, and for
#: shorter scans, it competes only where it is already compiled in the process. Measured
#: on a 2-core CPU: compiling costs ~2.5 s per process (~10 s the first time on a machine,
#: before inductor's disk cache is warm) and the compiled kernel then saved ~4-6 % of the
#: scan's time at detail "range" (~10-13 % at "full") against eager.
AUTO_FUSED_SECONDS = 100.0


def auto_fused(first_batch_s: float, batches_left: int | None, device: torch.device) -> bool:
    """Whether ``scan(kernel="auto")`` lets the compiled kernel compete (compiling it) after
    its first batch: the kernel can run on ``device`` and the rest of the scan is projected
    to take at least
    :data:`AUTO_FUSED_SECONDS` (``first_batch_s`` x ``batches_left``; unknown length: no)."""
    if batches_left is None or not fused_available(device):
        return False
    return first_batch_s * batches_left >= AUTO_FUSED_SECONDS


def _units(z: Tensor, unit_dim: int) -> int:
    if z.dim() == 0:
        return 1
    if z.dim() == 1:
        return int(z.shape[0])
    return int(z.shape[unit_dim])


def scan(
    model: nn.Module,
    data: Iterable[Batch] | Batch | Callable[[], Any],
    *,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    unit_dim: UnitDim = None,
    tau: float = classify.DORMANT_TAU,
    progress: bool = False,
    keep_mode: bool = False,
    functional: bool = True,
    detail: Detail = "range",
    kernel: KernelChoice = "auto",
    fused: bool | None = None,
    group: Any = None,
    mask: str | bool = "auto",
    max_tokens: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
) -> Report:
    """Run ``model`` over ``data`` and report its dead, dormant, ... units per call site.

    Args:
        model: any ``nn.Module``; it is not moved and its parameters are not changed.
        data: batches as described in the module docstring.
        max_batches: stop after this many non-empty batches (None: all of ``data``).
        device: where to move the batches' tensors (default: the model's device).
        unit_dim: unit-axis override, see :func:`deadrelu.capture.attach`.
        tau: ReDo dormancy threshold of the report.
        progress: show a progress bar (rich, on stderr): batches, and tokens and tokens/s
            when the batches carry tokens (against ``max_tokens`` when given).
        keep_mode: run in the model's current train/eval mode instead of eval.
        functional: also capture functional calls (``F.relu`` ...) in forwards.
        detail: which statistics to gather (:data:`deadrelu.stats.DETAIL_LEVELS`):
            "counts" (or ``False``: dead, dormant, rarely active), "range" (default: also
            the z extrema and non-finite counts that ``saturated``, ``nonfinite`` and
            :func:`deadrelu.explain.explain` need), "full" (or ``True``: also the z mean and
            variance; about 1.5x the statistics' cost of "range").
        kernel: which kernels reduce the activations (:meth:`UnitStats.update`; all
            give the same statistics up to float summation order, counts and extrema
            exactly). ``"auto"`` (default): per kind of activation, the fastest of those
            that apply, measured in this process on its first batch
            (:func:`deadrelu.stats.choose_kernel`): eager torch ops, the native CPU kernel
            (:mod:`deadrelu.native`, float32, "range"/"full"; never for bfloat16/float16
            activations), and the
            ``torch.compile``-d kernel where it is already compiled in this process or,
            from the second batch on, when the rest of the scan is projected to take at
            least :data:`AUTO_FUSED_SECONDS` (needs a known length: ``len(data)`` or
            ``max_batches``; compiling costs about 2.5 s per process, 10 s the first
            time on a machine). ``"eager"``, ``"native"``, ``"compiled"``: that kernel
            where it applies, else eager.
        fused: deprecated (a DeprecationWarning): ``False`` is ``kernel="eager"``,
            ``True`` ``kernel="auto"`` with compiling allowed from the first batch.
        group: ``torch.distributed`` process group whose ranks each scanned their shard
            of the data (e.g. under torchrun with a ``DistributedSampler``): at the end
            the ranks agree on the set of sites (one ``all_gather_object``; a site one
            rank never ran gets empty statistics there, so data-dependent control flow
            does not hang), then all-reduce every site's statistics in a few packed
            collectives (:func:`deadrelu.stats.all_reduce_many`), and every rank returns
            the same statistics: those of one scan over all the shards. Collective:
            every rank of the group must call ``scan`` with the same ``detail``; an
            exception on one rank before the end leaves the others waiting in the
            collective (until the group's timeout). Default ``None``: the world group when
            ``torch.distributed`` is initialised with more than one process, else no
            reduction; ``False``: never reduce (each rank reports its own shard).
        mask: padding to exclude (:mod:`deadrelu.tokens`). ``"auto"`` (default; or
            ``True``): a dict batch with an ``"attention_mask"`` ``(B, T)`` of 1 (token)
            and 0 (padding) has its padding positions left out of every site whose
            activation is ``(B, T, ...)`` or ``(B * T, ...)`` with the unit dim after
            those (FFN activations of HF models, OPT's flattened ones; not ``(B, T,
            ...)`` when B == T, which looks like a sequence-first ``(T, B, ...)``), where
            that mask belongs to the site (:class:`deadrelu.tokens.MaskScopes`): in an
            encoder-decoder model (T5, BART, ...: ``get_encoder()``/``get_decoder()``)
            the encoder's sites take ``attention_mask`` and the decoder's
            ``decoder_attention_mask`` (never the encoder's, even when the lengths are
            equal); in a multimodal model (LLaVA, CLIP) only the language model's sites
            take it; sites inside a mixture-of-experts block (``experts``, ``moe`` in
            their path, but for a shared expert: routed tokens, in the router's order)
            take none. Sites with no mask of their own or whose activation does not
            line up are scanned whole and named in ``report.meta["unmasked_sites"]``
            (with a warning when some batch had padding). A str: the batch key holding
            the mask (every dict batch must have it; the decoder's is ``"decoder_" +
            key``). ``False``: never mask. Without a mask in a batch nothing is done per
            activation. A generation step's mask, wider than ``input_ids`` by the
            KV-cached tokens, masks the new tokens by its last columns
            (:func:`deadrelu.tokens.batch_mask`).
        max_tokens: stop after the batch at which the tokens scanned reach this number
            (per process). The batches must carry tokens (see ``report.meta["tokens"]``).
        checkpoint: a file path (:mod:`deadrelu.scan_state`): the scan's accumulators,
            batches read, tokens and sites are written there atomically every
            ``checkpoint_every`` batches run and at the end; if the file exists when the
            scan starts, the scan resumes from it: it skips (reads without running) the
            batches of ``data`` already done, so ``data`` must yield the same batches in
            the same order (no reshuffling), and the report equals an uninterrupted
            scan's. A checkpoint of a finished scan is returned without reading ``data``
            (also one stopped by ``max_batches``/``max_tokens`` that are reached: as it
            is, even where it went past a smaller limit than its own).
            Under ``torch.distributed`` with more than one process rank r uses
            ``<checkpoint>.rank{r}`` (its own accumulators, before the all-reduce).
        checkpoint_every: batches run between two checkpoint writes (>= 1).

    Returns:
        A :class:`~deadrelu.report.Report`; ``report.meta`` holds ``batches`` (forwards
        run), ``skipped_empty``, ``mode``, ``fused_from_batch`` (the first batch, counted
        from 1, from which ``"auto"`` could compile the compiled kernel; None if none,
        also when compiling failed), ``kernels``: ``{"ran": sorted names of the
        :data:`~deadrelu.stats.Kernel` s that reduced activations ("native", "compiled",
        "eager"), "sites": {site: the names for that site}, "trials": [``"auto"``'s
        choices (:meth:`deadrelu.stats.KernelTrial.to_dict`: the kind of batch, the
        candidates, the best seconds per batch of each, the kernel chosen) with the
        "sites" they served]}``, and ``unrecognised`` (``{module path: class name}`` of
        the modules that look like activations deadrelu does not know, which were not measured: see
        :attr:`deadrelu.capture.CaptureHandle.unrecognised`; also one
        :class:`~deadrelu.capture.UnrecognisedActivationWarning` naming them and the fix).
        Token streams: ``tokens`` (int: tokens scanned, the sum of the masks, or the
        positions of ``input_ids`` / of 2-d integer tensor batches without a mask; None
        when the batches carry no tokens; an encoder-decoder model's: the encoder's),
        ``mask`` (the batch key a mask was read from, None if no batch had one),
        ``masked_sites`` (sites whose statistics exclude the padding) and
        ``unmasked_sites`` (sites that ran on masked batches but had no mask of their own
        or did not line up with it: their statistics include padding positions). With a
        ``checkpoint``: ``checkpoint`` = ``{"path": the file, "resumed_from": batches
        read before this call (0: a fresh scan)}``.
        Reduced across a ``group``, ``batches``, ``skipped_empty`` and ``tokens`` are
        totals over the ranks, ``fused_from_batch`` the earliest, ``kernels``,
        ``unrecognised``, ``masked_sites`` and ``unmasked_sites`` the union (each trial
        with its ``"rank"``), the sites in the order rank 0 first ran
        them (then those it never ran, by rank), and ``ranks`` is ``{"world_size": W,
        "batches": [forwards run by each rank], "sites": {site: [ranks that ran it]}}``
        (absent without a reduction).

    Raises:
        ValueError: ``data`` yields no batch (or only empty ones; with a ``group``: on
            every rank), the ranks of a ``group`` saw a site with different numbers of
            units or a different ``detail``, ``max_batches``, ``max_tokens`` or
            ``checkpoint_every`` is not an int >= 1, ``max_tokens`` is given but a batch
            carries no tokens, ``mask`` names a key a dict batch lacks,
            ``tau`` is not a finite number >= 0, the model is on the meta
            device, it calls no activation deadrelu recognises, or the ``checkpoint``
            file is not a scan checkpoint, was written by another model or with other
            options (``detail``, ``mask``, ...; the message names which), or has read more
            batches than ``data`` holds.

    Warns:
        RuntimeWarning: units saw NaN/inf (counted in every detail level as
            ``report.nonfinite_units``); it says how many of them count as dead.
        UserWarning: sites not restricted to the real tokens, when some batch had
            padding or a site's own mask was missing (an encoder-decoder's batch without
            ``decoder_attention_mask``: the decoder's padding is unknown).
        TypeError: a batch of an unsupported type.
    """
    for name, value in (("max_batches", max_batches), ("max_tokens", max_tokens)):
        if value is not None and not _positive_int(value):
            raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    if not _positive_int(checkpoint_every):
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    classify.Thresholds(tau=tau)  # ValueError naming tau (nan, negative) before any work
    key, key_required = mask_key(mask)
    require_materialised(model)
    level = detail_level(detail)
    reduce_over = _scan_group(group)
    on = model_device(model)
    target = torch.device(device) if device is not None else on
    if target.type != on.type:
        raise ValueError(
            f"the model is on {on} but device={target} was asked for the batches: "
            f"move the model first (model.to({str(target)!r})) or leave device=None"
        )
    if fused is not None:
        warnings.warn(
            "scan(fused=...) is deprecated: pass kernel='eager' (fused=False) or leave "
            "kernel='auto' (fused=True allowed compiling from the first batch)",
            DeprecationWarning,
            stacklevel=2,
        )
        kernel = "auto" if fused else "eager"
    if kernel not in KERNEL_CHOICES:
        raise ValueError(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")

    ckpt: Path | None = None
    state = ScanState(fingerprint={})
    if checkpoint is not None:
        ckpt = checkpoint_path(checkpoint)
        state.fingerprint = fingerprint(
            model,
            detail=level,
            mask=key,
            functional=functional,
            keep_mode=keep_mode,
            unit_dim=unit_dim,
        )
        if ckpt.exists():
            saved = ScanState.load(ckpt, target)
            check_fingerprint(saved.fingerprint, state.fingerprint, ckpt)
            state = saved
            log.info("scan: resuming from %s after %d batches", ckpt, state.read)
    resumed_from = state.read
    stats: dict[str, UnitStats] = state.stats
    ran_by: dict[str, set[str]] = {k: set(v) for k, v in state.kernels.items()}
    masked: set[str] = set(state.masked_sites)
    unmasked: set[str] = set(state.unmasked_sites)
    missing: set[str] = set()  # unmasked sites whose own mask a batch lacked
    tokens = state.tokens or 0
    tokenless = state.tokens is None and state.batches > 0  # a batch carried no tokens
    scopes = None if key is None else MaskScopes(model, key)
    #: the masks of the batch running by batch key (None: it has none), see MaskScopes
    masks: dict[str, TokenMask] | None = None

    def stats_for(site: Site, z: Tensor, d: int) -> UnitStats:
        s = stats.get(site.name)
        if s is None:
            s = stats[site.name] = UnitStats.empty(_units(z, d), z.device, detail=level)
        return s

    def site_mask(site: Site) -> TokenMask | None:
        # the mask that restricts this site in the batch running (None: left whole)
        assert masks is not None and scopes is not None
        k = scopes.site_key(site.name, site.module)
        tm = None if k is None else masks.get(k)
        if tm is None:
            unmasked.add(site.name)
            if k is not None:  # its mask is missing: its padding unknown
                missing.add(site.name)
        return tm

    def restrict(site: Site, z: Tensor, mask: TokenMask) -> tuple[Tensor, int]:
        picked = mask.select(z, site.unit_dim)
        if picked is None:
            unmasked.add(site.name)
            return z, site.unit_dim
        masked.add(site.name)
        return picked

    use_fused = fused is True  # "auto" may compile (from the first batch)

    def collect(site: Site, z: Tensor, out: Tensor) -> None:
        if z.numel() == 0:
            return
        d = site.unit_dim
        spec = site.activation.spec
        tm = None if masks is None else site_mask(site)
        if tm is not None:
            z, d = restrict(site, z, tm)
            if tm.padded and z.shape != out.shape:  # restricted to the real tokens
                if spec.name == "relu":  # out = relu(z): from z, without selecting out too
                    ran = stats_for(site, z, d).update_z(
                        z, d, kernel=kernel, allow_compile=use_fused, relu=True
                    )
                    ran_by.setdefault(site.name, set()).add(ran or "eager")
                    return
                out = restrict(site, out, tm)[0]
        ran = stats_for(site, z, d).update(
            z,
            out,
            d,
            kernel=kernel,
            allow_compile=use_fused,
            out_nonnegative=spec.nonnegative,
            relu=spec.name == "relu",
        )
        ran_by.setdefault(site.name, set()).add(ran or "eager")

    def abs_from_z(site: Site) -> bool:
        # an in-place ReLU where a one-pass kernel may run (it sums relu(z) from z at no
        # extra pass): its abs_sum comes from z in the pre-hook, the post-hook adds nothing
        # (eagerly one pass more than summing the output; "auto" times eager so too)
        return kernel != "eager" and site.activation.spec.name == "relu"

    def collect_z(site: Site, z: Tensor) -> None:
        # in-place activation modules: z before it is overwritten, without a copy
        if z.numel() == 0:
            return
        d = site.unit_dim
        tm = None if masks is None else site_mask(site)
        if tm is not None:
            z, d = restrict(site, z, tm)
        s = stats_for(site, z, d)
        ran = s.update_z(z, d, kernel=kernel, allow_compile=use_fused, relu=abs_from_z(site))
        ran_by.setdefault(site.name, set()).add(ran or "eager")

    def collect_out(site: Site, out: Tensor) -> None:
        s = stats.get(site.name)
        if s is not None and out.numel() and not abs_from_z(site):
            d = site.unit_dim
            tm = None if masks is None else site_mask(site)
            if tm is not None:
                out, d = restrict(site, out, tm)
            s.add_output(out, d, out_nonnegative=site.activation.spec.nonnegative)

    flags = [(m, m.training) for m in model.modules()]
    seen, ran, skipped = state.read, state.batches, state.skipped_empty
    ran_now = 0  # forwards run by this call
    mask_from: str | None = key if masked or unmasked else None
    padded = False  # some batch had padding
    fused_from: int | None = 1 if use_fused else None
    length = count_batches(data, max_batches)
    sites: dict[str, Site] = dict(state.sites)
    unrecognised: dict[str, str] = {}

    def snapshot(exhausted: bool) -> None:
        assert ckpt is not None
        state.read, state.batches, state.skipped_empty = seen, ran, skipped
        state.tokens = None if tokenless else tokens
        state.exhausted = exhausted
        state.stats = stats
        state.sites = {name: sites[name] for name in stats}
        state.kernels = {k: sorted(v) for k, v in ran_by.items()}
        state.masked_sites, state.unmasked_sites = sorted(masked), sorted(unmasked)
        state.save(ckpt)

    done = state.exhausted or (
        resumed_from > 0
        and (
            (max_batches is not None and ran >= max_batches)
            or (max_tokens is not None and not tokenless and tokens >= max_tokens)
        )
    )
    bar: _Bar | None = None
    exhausted = state.exhausted
    try:
        if not keep_mode:
            model.eval()
        batches = iter_batches(data, max_batches)
        if resumed_from and not done:
            batches = _skip(batches, resumed_from, ckpt)
        if progress and not done:
            bar = _Bar(length, max_tokens, ran, None if tokenless else tokens)
        with attach(
            model,
            collect,
            unit_dim=unit_dim,
            functional=functional,
            inplace=(collect_z, collect_out),
        ) as handle:
            with torch.no_grad():
                for batch in () if done else batches:
                    seen += 1
                    args, kwargs, lead = split_batch(batch)
                    if lead is not None and lead.dim() > 0 and lead.shape[0] == 0:
                        skipped += 1
                        continue
                    found = batch_mask(kwargs, key, key_required)
                    n_tokens = batch_tokens(args, kwargs, found)
                    read = (
                        None
                        if scopes is None
                        else scopes.batch_masks(kwargs, found, target, n_tokens)
                    )
                    if read is not None:
                        masks, has_padding = read
                        mask_from = key if found is not None else mask_from or f"decoder_{key}"
                        padded = padded or has_padding
                    if n_tokens is None:
                        tokenless = True
                        if max_tokens is not None:
                            raise ValueError(_tokenless_message(seen))
                    else:
                        tokens += n_tokens
                    start = time.perf_counter()
                    model(*to_device(args, target), **to_device(kwargs, target))
                    masks = None
                    ran += 1
                    ran_now += 1
                    if ran_now == 1 and not handle.sites:
                        raise ValueError(
                            _no_activation_message(model, functional, handle.unrecognised)
                        )
                    if ran_now == 1 and kernel == "auto" and not use_fused and length:
                        if target.type == "cuda":  # once: time the work, not the launches
                            torch.cuda.synchronize(target)
                        left = length - seen
                        if auto_fused(time.perf_counter() - start, left, target):
                            use_fused, fused_from = True, ran + 1
                            log.info("scan: %d batches left, the compiled kernel may compete", left)
                    if bar is not None:
                        bar.update(ran, None if tokenless else tokens)
                    if ckpt is not None and ran % checkpoint_every == 0:
                        sites.update(handle.sites)
                        snapshot(exhausted=False)
                    if max_batches is not None and ran >= max_batches:
                        break
                    if max_tokens is not None and tokens >= max_tokens:
                        break
                else:
                    exhausted = True
            sites.update(handle.sites)
            unrecognised = handle.unrecognised
    finally:
        masks = None
        if bar is not None:
            bar.close()
        for m, was_training in flags:
            m.training = was_training
        release_scratch()
    if ckpt is not None and not done:
        snapshot(exhausted=exhausted)
    if fused_from is not None and (fused_from > ran or not fused_available(target)):
        fused_from = None  # nothing left to run fused, or compiling failed: all eager
    meta: dict[str, Any] = {
        "batches": ran,
        "skipped_empty": skipped,
        "mode": "keep" if keep_mode else "eval",
        "model": type(model).__name__,
        "fused_from_batch": fused_from,
        "kernels": _kernels_meta(ran_by, stats),
        "unrecognised": unrecognised,
        "tokens": None if tokenless or ran == 0 else tokens,
        "mask": mask_from,
        "masked_sites": [s for s in stats if s in masked],
        "unmasked_sites": [s for s in stats if s in unmasked],
    }
    if ckpt is not None:
        meta["checkpoint"] = {"path": str(ckpt), "resumed_from": resumed_from}
    if reduce_over is not None:  # before any local error: the other ranks must not hang
        seen = _reduce_across_ranks(reduce_over, stats, sites, meta, seen, target)
        ran, skipped = meta["batches"], meta["skipped_empty"]
        unrecognised = meta["unrecognised"]
    if seen == 0:
        raise ValueError(
            "data yielded no batches: pass a non-empty DataLoader or iterable (check the "
            "dataset length, drop_last, and that a generator was not already consumed)"
        )
    if ran == 0:
        raise ValueError(
            f"all {skipped} batches were empty (size 0 in the first dim): nothing to scan"
        )
    if skipped:
        log.info("scan skipped %d empty batch(es)", skipped)
    if (padded and meta["unmasked_sites"]) or missing:
        warnings.warn(
            f"scan: {len(meta['unmasked_sites'])} site(s) were not restricted to the real "
            f"tokens, so their statistics include padding positions, if any: "
            f"{', '.join(meta['unmasked_sites'])} (listed in report.meta['unmasked_sites']). "
            f"A site is left whole when its activation is not (batch, tokens, ...) or "
            f"(batch * tokens, ...) with the units after those (or batch == tokens: "
            f"(tokens, batch, ...) looks the same), when it is in the decoder "
            f"of an encoder-decoder model and the batch has no 'decoder_{key}', when it "
            f"is outside the language model of a multimodal model, or when it is inside "
            f"a mixture-of-experts block (see deadrelu.tokens.MaskScopes); scan unpadded "
            f"batches to exclude nothing",
            UserWarning,
            stacklevel=2,
        )
    warn_unrecognised(unrecognised)
    report = Report(stats, sites, tau=tau, meta=meta)
    _warn_nonfinite(report)
    return report


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _tokenless_message(batch: int) -> str:
    return (
        f"max_tokens needs batches that carry tokens, but batch {batch} has none: pass "
        f"dict batches with 'input_ids' or an 'attention_mask', or 2-d integer tensors of "
        f"token ids (or use max_batches)"
    )


def _skip(batches: Iterator[Any], n: int, path: Path | None) -> Iterator[Any]:
    """``batches`` without its first ``n`` (those a checkpoint has already scanned)."""
    for i in range(n):
        if next(batches, _END) is _END:
            raise ValueError(
                f"checkpoint {str(path)!r} has read {n} batches but data yields only {i}: "
                f"resume with the same data in the same order, or delete the checkpoint"
            )
    return batches


_END = object()


def _scan_group(group: Any) -> Any:
    """The process group ``scan(group=...)`` reduces over, or None for no reduction:
    ``False`` never; ``None`` the world group when torch.distributed is initialised with
    more than one process; else ``group`` itself."""
    if group is False:
        return None
    if group is None:
        group = default_group()
        if group is None:
            return None
        import torch.distributed as dist

        return group if dist.get_world_size(group) > 1 else None
    return group


def _reduce_across_ranks(
    group: Any,
    stats: dict[str, UnitStats],
    sites: dict[str, Site],
    meta: dict[str, Any],
    seen: int,
    device: torch.device,
) -> int:
    """Make this rank's ``stats``, ``sites`` and ``meta`` those of all ranks of ``group``,
    in place (see :func:`scan`'s ``group``); returns the batches all ranks read.

    Two steps, the same on every rank: one ``all_gather_object`` of each rank's sites
    ``{name: (units, unit_dim, activation, kind, module, detail, float dtype)}`` and
    meta, then empty statistics for the sites this rank never ran and one packed
    :func:`~deadrelu.stats.all_reduce_many` over all sites in the agreed order."""
    import torch.distributed as dist

    mine = {
        "sites": {
            name: (
                s.units,
                sites[name].unit_dim,
                str(sites[name].activation),
                sites[name].kind,
                sites[name].module,
                s.detail,
                s.abs_sum.dtype,
            )
            for name, s in stats.items()
        },
        "seen": seen,
        **{k: meta[k] for k in ("batches", "skipped_empty", "fused_from_batch", "kernels")},
        "unrecognised": meta["unrecognised"],
        **{k: meta[k] for k in ("tokens", "mask", "masked_sites", "unmasked_sites")},
    }
    world = dist.get_world_size(group)
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine, group=group)
    agreed: dict[str, tuple[Any, ...]] = {}
    seen_by: dict[str, list[int]] = {}
    for rank, theirs in enumerate(every):
        for name, info in theirs["sites"].items():
            first = agreed.setdefault(name, info)
            if (first[0], first[1], first[5]) != (info[0], info[1], info[5]):
                raise ValueError(
                    f"scan across {world} ranks: site {name!r} has (units, unit_dim, "
                    f"detail) {first[0], first[1], first[5]} on rank {seen_by[name][0]} but "
                    f"{info[0], info[1], info[5]} on rank {rank}: every rank must scan the "
                    f"same model with the same detail (or pass group=False)"
                )
            seen_by.setdefault(name, []).append(rank)
    local = dict(stats)
    stats.clear()
    for name, (units, unit_dim, act, kind, module, detail, dtype) in agreed.items():
        if name not in local:
            local[name] = UnitStats.empty(units, device, detail=detail, dtype=dtype)
            activation = activations.get(act)
            assert activation is not None
            sites[name] = Site(name, activation, unit_dim, kind, module)
        stats[name] = local[name]
    all_reduce_many(list(stats.values()), group)
    fused = [r["fused_from_batch"] for r in every if r["fused_from_batch"] is not None]
    meta.update(
        batches=sum(r["batches"] for r in every),
        skipped_empty=sum(r["skipped_empty"] for r in every),
        fused_from_batch=min(fused, default=None),
        kernels={
            "ran": sorted(set().union(*(r["kernels"]["ran"] for r in every))),
            "sites": {
                name: sorted(set().union(*(r["kernels"]["sites"].get(name, ()) for r in every)))
                for name in agreed
            },
            "trials": [
                {**t, "rank": rank} for rank, r in enumerate(every) for t in r["kernels"]["trials"]
            ],
        },
        unrecognised={k: v for r in every for k, v in r["unrecognised"].items()},
        tokens=None
        if all(r["tokens"] is None for r in every)
        else sum(r["tokens"] or 0 for r in every),
        mask=next((r["mask"] for r in every if r["mask"] is not None), None),
        masked_sites=[n for n in agreed if any(n in r["masked_sites"] for r in every)],
        unmasked_sites=[n for n in agreed if any(n in r["unmasked_sites"] for r in every)],
        ranks={
            "world_size": world,
            "batches": [r["batches"] for r in every],
            "sites": seen_by,
        },
    )
    return sum(r["seen"] for r in every)


def _warn_nonfinite(report: Report) -> None:
    """One RuntimeWarning naming the sites whose units saw NaN/inf, and how many of those
    units the report counts dead (NaN > 0 is false)."""
    bad = {s: report.nonfinite_units(s) for s in report.stats}
    bad = {s: u for s, u in bad.items() if u}
    if not bad:
        return
    dead = sum(len(set(u) & set(report.dead_units(s))) for s, u in bad.items())
    where = ", ".join(f"{s!r} ({len(u)})" for s, u in bad.items())
    warnings.warn(
        f"{sum(len(u) for u in bad.values())} units saw NaN/inf pre-activations or "
        f"outputs, at {where}; {dead} of them are also counted dead (their z was "
        "never > 0; NaN > 0 is false): check the inputs and weights for NaN/inf "
        "(report.nonfinite_units(site) lists them)",
        RuntimeWarning,
        stacklevel=3,
    )


def _kernels_meta(ran_by: Mapping[str, set[str]], stats: Mapping[str, UnitStats]) -> dict[str, Any]:
    """``report.meta["kernels"]``: what ran, overall and per site, and ``"auto"``'s trials."""
    trials: dict[tuple[Any, ...], tuple[KernelTrial, list[str]]] = {}
    for site, s in stats.items():
        for trial in s.kernel_trials:
            trials.setdefault(trial.kind, (trial, []))[1].append(site)
    return {
        "ran": sorted(set().union(*ran_by.values())),
        "sites": {site: sorted(names) for site, names in ran_by.items()},
        "trials": [{**t.to_dict(), "sites": sites} for t, sites in trials.values()],
    }


def _no_activation_message(
    model: nn.Module, functional: bool, unrecognised: Mapping[str, str]
) -> str:
    hint = (
        ""
        if functional
        else " (functional calls such as F.relu were not looked for: functional=False)"
    )
    return (
        f"the model ({type(model).__name__}) called no activation layer or function that "
        f"deadrelu recognises{hint}; known: {', '.join(known_names())}. Use one of these "
        f"(modules such as nn.ReLU or calls such as F.relu / x.relu()), declare your "
        f"activation class with deadrelu.register_module(MyAct, like='gelu_tanh'), or "
        f"register a new function with deadrelu.activations.register()"
        + (f". {unrecognised_message(unrecognised)}" if unrecognised else "")
    )


class _Bar:
    """The scan's progress bar (rich, on stderr, removed when done): batches run (of the
    known total), and with tokens their count and rate; against ``max_tokens`` when given.

    Args:
        total: batches the scan will run at most, if known.
        max_tokens: the scan's token limit, if any (then the bar counts tokens).
        batches, tokens: already done (a resumed scan); tokens None: not counted.
    """

    def __init__(
        self, total: int | None, max_tokens: int | None, batches: int, tokens: int | None
    ) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.by_tokens = max_tokens is not None
        self.total = total
        self.progress = Progress(
            TextColumn("scanning"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.task = self.progress.add_task(
            "scanning", total=max_tokens if self.by_tokens else total, info=""
        )
        self.start = time.perf_counter()
        self.tokens0 = tokens or 0
        self.progress.start()
        self.update(batches, tokens)

    def update(self, batches: int, tokens: int | None) -> None:
        """Show ``batches`` run and ``tokens`` scanned so far (None: not counted)."""
        info = f"{batches}" + (f"/{self.total}" if self.total is not None else "") + " batches"
        if tokens is not None:
            elapsed = time.perf_counter() - self.start
            rate = (tokens - self.tokens0) / elapsed if elapsed > 0 else 0.0
            info += f", {tokens:,} tokens, {rate:,.0f} tokens/s"
        done = tokens if self.by_tokens and tokens is not None else batches
        self.progress.update(self.task, completed=done, info=info)

    def close(self) -> None:
        """Remove the bar."""
        self.progress.stop()
