"""Per-example statistics from a causal LM: losses, EL2N and per-example gradients.

Every function takes already encoded examples (:func:`tamis.models.lm.encode_records`) and
groups them with :func:`tamis.models.batching.token_batches`, so the batches, and therefore the
results, are fixed by the examples themselves. Outputs come back in input order.

* :func:`sequence_stats` is one forward pass: mean token loss over the scored tokens, their
  count, and token EL2N, the mean over scored tokens of ||p_t - onehot(y_t)||_2, computed as
  sqrt(sum p^2 - 2 p_y + 1) so the vocabulary-sized one-hot never exists.
* :func:`per_example_grads` gives each example of a chunk its own gradient in one batched pass
  instead of a backward per example. Two exact routes: when every differentiated parameter is
  the weight of a bias-free ``nn.Linear`` (LoRA's A and B matrices), one ordinary batched
  backward to the layers' outputs and an einsum of inputs by output gradients per example
  (``"linear"``); for any other parameters, ``torch.func.vmap`` over ``grad`` of
  ``functional_call`` (``"vmap"``). The same step can Adam-precondition the gradients (LESS),
  project them and L2-normalize them; when a chunk's gradients exceed a block budget they are
  made, preconditioned and projected a weight at a time and never held whole.

An example with no scored token (say, its answer was truncated away) gets a NaN loss and EL2N,
a count of 0 and a zero gradient.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .batching import token_batches
from .lm import Encoded, model_device, pad_batch, token_nll
from .lm import pad_token_id as _pad_id

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# What the projection of per-example gradients may hold at once besides the model and its output
# (LESS's ``block_mb``): a chunk's whole gradients when they fit, else one piece of them.
DEFAULT_BLOCK_BYTES = 256 << 20


def el2n_from_logits(logits, targets):
    """Token EL2N [..] from logits [.., V] and target ids [..]: sqrt(sum p^2 - 2 p_y + 1), in fp32."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    p_y = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (probs.square().sum(-1) - 2 * p_y + 1).clamp_min(0).sqrt()


def sequence_stats(model, examples: Sequence[Encoded], *, batch_tokens: int = 16_384,
                   max_rows: int = 1024) -> dict[str, np.ndarray]:
    """``{"loss", "tokens", "el2n"}``: mean token loss, scored-token count and token EL2N per example."""
    import torch

    n = len(examples)
    loss = np.full(n, np.nan, dtype=np.float32)
    el2n = np.full(n, np.nan, dtype=np.float32)
    tokens = np.zeros(n, dtype=np.int64)
    device, pad, was_training = model_device(model), _pad_id(model), model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in token_batches([len(e) for e in examples], batch_tokens, max_rows):
                ids, mask, labels = pad_batch([examples[i] for i in batch], pad, device)
                logits = model(input_ids=ids, attention_mask=mask).logits
                for row, i in enumerate(batch):
                    # Row by row: fp32 probabilities for one row at a time bound the memory.
                    width = len(examples[i])
                    nll, scored = token_nll(logits[row : row + 1, :width], labels[row : row + 1, :width])
                    count = int(scored.sum())
                    tokens[i] = count
                    if count:
                        loss[i] = float(nll.sum()) / count
                        targets = labels[row, 1:width]
                        keep = scored[0]
                        token_el2n = el2n_from_logits(logits[row, : width - 1][keep], targets[keep])
                        el2n[i] = float(token_el2n.mean())
    finally:
        model.train(was_training)
    return {"loss": loss, "tokens": tokens, "el2n": el2n}


def mean_token_loss(model, examples: Sequence[Encoded], *, batch_tokens: int = 16_384,
                    max_rows: int = 1024) -> np.ndarray:
    """Mean loss over each example's scored tokens, float32 (NaN when none): the one definition
    every selector uses. Bit for bit :func:`sequence_stats`' ``loss`` (same batches, same per-row
    sum), without its EL2N's softmax over the vocabulary."""
    import torch

    loss = np.full(len(examples), np.nan, dtype=np.float32)
    device, pad, was_training = model_device(model), _pad_id(model), model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in token_batches([len(e) for e in examples], batch_tokens, max_rows):
                ids, mask, labels = pad_batch([examples[i] for i in batch], pad, device)
                logits = model(input_ids=ids, attention_mask=mask).logits
                for row, i in enumerate(batch):
                    width = len(examples[i])
                    nll, scored = token_nll(logits[row : row + 1, :width], labels[row : row + 1, :width])
                    count = int(scored.sum())
                    if count:
                        loss[i] = float(nll.sum()) / count
    finally:
        model.train(was_training)
    return loss


def grad_param_names(model, params: str | Sequence[str] = "trainable") -> list[str]:
    """Names of the parameters to differentiate: ``"trainable"`` (requires_grad, e.g. LoRA),
    ``"all"``, or an explicit list. Tied weights appear once (as ``named_parameters`` lists them)."""
    named = dict(model.named_parameters())
    if params == "trainable":
        names = [k for k, p in named.items() if p.requires_grad]
    elif params == "all":
        names = list(named)
    else:
        names = list(params)
        unknown = [k for k in names if k not in named]
        if unknown:
            raise KeyError(f"no such parameters: {unknown[:3]}")
    if not names:
        raise ValueError("no parameters to differentiate (is the model frozen?)")
    return names


def grad_dim(model, params: str | Sequence[str] = "trainable") -> int:
    named = dict(model.named_parameters())
    return sum(named[k].numel() for k in grad_param_names(model, params))


def flat_moments(moments: dict, names: Sequence[str], device=None):
    """Adam (m, v) dicts keyed by parameter name, flattened in ``names`` order to two fp32 vectors."""
    import torch

    missing = [k for k in names if k not in moments]
    if missing:
        raise KeyError(f"no Adam moments for {missing[:3]}")
    m = torch.cat([moments[k][0].reshape(-1).float() for k in names])
    v = torch.cat([moments[k][1].reshape(-1).float() for k in names])
    return (m, v) if device is None else (m.to(device), v.to(device))


def adam_precondition(g, m, v, betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS):
    """LESS's Adam update direction for gradients ``g`` [N, D] given moments ``m``, ``v`` [D]:
    m' = b1 m + (1-b1) g; v' = b2 v + (1-b2) g^2; m' / sqrt(v' + eps) (eps inside, no bias correction)."""
    b1, b2 = betas
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g.square()
    return m_new / (v_new + eps).sqrt()


def linear_weight_modules(model, names: Sequence[str]) -> list | None:
    """The ``nn.Linear`` module of each parameter when every one is the weight of a bias-free
    Linear layer (LoRA's A and B are), else None: the condition for the ``"linear"`` route."""
    import torch

    modules = []
    for name in names:
        if not name.endswith(".weight"):
            return None
        try:
            module = model.get_submodule(name[: -len(".weight")])
        except AttributeError:
            return None
        if type(module) is not torch.nn.Linear or module.bias is not None:
            return None
        modules.append(module)
    return modules


def _iter_linear_grad_chunks(model, examples: Sequence[Encoded], names: list[str], modules: list, *,
                             chunk_size: int, batch_tokens: int,
                             piece_bytes: int | None = None) -> Iterator[tuple[list[int], object]]:
    """Per-example gradients of Linear weights from one batched backward.

    For y = x W^T the gradient of example n's loss is sum_t dL_n/dy[n, t] x[n, t]^T. Examples in
    a batch do not interact (causal mask, padding masked out, no batch statistics), so the
    gradient of the *sum* of per-example losses with respect to y[n] is example n's own; the
    per-example weight gradient is then one batched matmul of output gradients by inputs.

    With ``piece_bytes`` None each chunk's gradients come whole, [n, D]. Otherwise they come as an
    iterator of pieces ``(name, start, values [n, width])`` in parameter order, each a run of whole
    rows of one weight and at most ``piece_bytes`` (or one row), made only when asked for: the
    whole [n, D] never exists. Consume each chunk's pieces before asking for the next chunk.
    """
    import torch

    device, pad = model_device(model), _pad_id(model)
    calls: dict[int, list[tuple[object, object]]] = {id(m): [] for m in modules}

    def remember(module, inputs, output):
        calls[id(module)].append((inputs[0], output))

    def weight_grad(m, parts, n, rows=slice(None)):
        """Rows ``rows`` of the weight's per-example gradients [n, out_rows, in], summed over calls."""
        total = None
        for x, dy in parts:
            x2 = x.reshape(n, -1, x.shape[-1]).float()
            dy2 = dy.reshape(n, -1, dy.shape[-1])[:, :, rows].float()
            part = torch.bmm(dy2.transpose(1, 2), x2)  # [n, out, in]
            total = part if total is None else total + part
        if total is None:
            total = torch.zeros((n, *m.weight[rows].shape), device=device)
        return total

    def pieces_of(per_module, n):
        for name, m, parts in zip(names, modules, per_module):
            out_rows, in_cols = m.weight.shape
            step = max(1, piece_bytes // max(1, n * in_cols * 4))
            for r0 in range(0, out_rows, step):
                r1 = min(r0 + step, out_rows)
                yield name, r0 * in_cols, weight_grad(m, parts, n, slice(r0, r1)).reshape(n, -1)

    handles = [m.register_forward_hook(remember) for m in modules]
    named = dict(model.named_parameters())
    needed = [named[k] for k in names]
    flags = [p.requires_grad for p in needed]
    try:
        for p in needed:
            p.requires_grad_(True)
        for chunk in token_batches([len(e) for e in examples], batch_tokens, max_rows=chunk_size):
            for seen in calls.values():
                seen.clear()
            ids, mask, labels = pad_batch([examples[i] for i in chunk], pad, device)
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
                nll, scored = token_nll(logits, labels)
                losses = nll.sum(1) / scored.sum(1).clamp_min(1)
                outputs = [out for m in modules for _, out in calls[id(m)]]
                grads_out = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            del logits, nll, losses, outputs
            g = iter(grads_out)
            # Per module: its calls' (input, output gradient), unused outputs (no gradient) dropped.
            # Detached: the inputs are part of the autograd graph (LoRA weights upstream require
            # grad), and anything computed from them with grad mode on would record a graph that
            # keeps every intermediate alive, the projection's tiles included (one tile saved per
            # addmm: the whole projection matrix, before this was detached).
            per_module = [[(x.detach(), dy) for (x, _), dy in zip(calls[id(m)], g) if dy is not None] for m in modules]
            del grads_out, g
            for seen in calls.values():
                seen.clear()  # the outputs are no longer needed; inputs live on in per_module
            if piece_bytes is None:
                # Written into one [n, D] tensor module by module: no list of parts to concatenate.
                flat = torch.empty((len(chunk), sum(m.weight.numel() for m in modules)), device=device)
                offset = 0
                for m, parts in zip(modules, per_module):
                    flat[:, offset : offset + m.weight.numel()] = weight_grad(m, parts, len(chunk)).reshape(len(chunk), -1)
                    offset += m.weight.numel()
                yield chunk, flat
                del flat
            else:
                yield chunk, pieces_of(per_module, len(chunk))
            del per_module
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(needed, flags):
            p.requires_grad_(flag)
        for seen in calls.values():
            seen.clear()


def _iter_grad_chunks(model, examples: Sequence[Encoded], names: list[str], *, chunk_size: int,
                      batch_tokens: int, method: str = "auto",
                      piece_bytes: int | None = None) -> Iterator[tuple[list[int], object]]:
    """(indices, flat fp32 gradients [len(indices), D]) chunk by chunk, by the fastest exact route
    (``method``: "auto", "linear" or "vmap"; see the module docstring). With ``piece_bytes``,
    (indices, iterator of ``(name, start, values)`` pieces) instead: see
    :func:`_iter_linear_grad_chunks`. The vmap route makes each chunk's gradients whole anyway
    and only hands them out parameter by parameter."""
    if method not in ("auto", "linear", "vmap"):
        raise ValueError(f"method must be 'auto', 'linear' or 'vmap', got {method!r}")
    modules = linear_weight_modules(model, names) if method != "vmap" else None
    if method == "linear" and modules is None:
        raise ValueError("method='linear' needs every parameter to be the weight of a bias-free nn.Linear")
    if modules is not None:
        yield from _iter_linear_grad_chunks(model, examples, names, modules, chunk_size=chunk_size,
                                            batch_tokens=batch_tokens, piece_bytes=piece_bytes)
        return
    import torch
    from torch.func import functional_call, grad, vmap

    device, pad = model_device(model), _pad_id(model)
    named = dict(model.named_parameters())
    params = {k: named[k].detach() for k in names}

    def example_loss(p, ids, mask, labels):
        logits = functional_call(model, p, (), {"input_ids": ids.unsqueeze(0), "attention_mask": mask.unsqueeze(0)}).logits
        nll, scored = token_nll(logits, labels.unsqueeze(0))
        return nll.sum() / scored.sum().clamp_min(1)

    grads_of_chunk = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))
    for chunk in token_batches([len(e) for e in examples], batch_tokens, max_rows=chunk_size):
        ids, mask, labels = pad_batch([examples[i] for i in chunk], pad, device)
        grads = grads_of_chunk(params, ids, mask, labels)
        if piece_bytes is None:
            yield chunk, torch.cat([grads[k].reshape(len(chunk), -1).float() for k in names], dim=1)
        else:
            yield chunk, ((k, 0, grads.pop(k).reshape(len(chunk), -1).float()) for k in names)


def per_example_grads(model, examples: Sequence[Encoded], *, params: str | Sequence[str] = "trainable",
                      chunk_size: int = 8, batch_tokens: int = 4096, projector=None, normalize: bool = False,
                      adam_moments: dict | None = None, adam_betas: tuple[float, float] = ADAM_BETAS,
                      adam_eps: float = ADAM_EPS, block_bytes: int = DEFAULT_BLOCK_BYTES,
                      project_buffer_bytes: int | None = None, method: str = "auto") -> np.ndarray:
    """Per-example gradients of the mean scored-token loss, [N, D] or [N, projector.out_dim] fp32.

    ``chunk_size`` rows and ``batch_tokens`` padded tokens per batched pass bound the activations;
    ``method`` picks the route (module docstring), "auto" the Linear route whenever it applies.
    Order of operations: Adam preconditioning (when ``adam_moments`` maps each name to
    (exp_avg, exp_avg_sq)), then the projection, then L2 normalization. The model runs in eval
    mode (no dropout) and its parameters are left untouched.

    ``block_bytes`` bounds what the projection holds besides the model and the output. When a
    chunk's gradients fit in it (chunk_size x D x 4 bytes), chunks are kept whole and buffered up
    to ``project_buffer_bytes`` (default ``block_bytes``) before projecting, so regenerated tiles
    serve many rows. When they do not fit, they stream: each chunk's gradients are made a piece
    of at most ``block_bytes`` at a time (:func:`_iter_linear_grad_chunks`), Adam-preconditioned
    with that piece's slice of the moments, and added into the chunk's [chunk, d] projection
    against the projection's rows for those coordinates, regenerated tile by tile
    (:class:`~tamis.models.projection.StreamProjection`). Both routes add tile by tile in the same
    order, so they give the same projected vectors (equal in tests on CPU; at worst they differ
    by the rounding of a reordered float sum).
    """
    names = grad_param_names(model, params)
    dim = grad_dim(model, names)
    out_dim = projector.out_dim if projector is not None else dim
    if projector is not None and projector.in_dim != dim:
        raise ValueError(f"projector expects {projector.in_dim} values, the gradients have {dim}")
    if adam_moments is not None:
        missing = [k for k in names if k not in adam_moments]
        if missing:
            raise KeyError(f"no Adam moments for {missing[:3]}")
    device = model_device(model)
    out = np.zeros((len(examples), out_dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        if projector is not None and chunk_size * dim * 4 > block_bytes:
            _stream_projected(model, examples, names, out, projector, adam_moments, adam_betas, adam_eps,
                              normalize=normalize, chunk_size=chunk_size, batch_tokens=batch_tokens,
                              block_bytes=block_bytes, method=method)
        else:
            _whole_projected(model, examples, names, out, projector, adam_moments, adam_betas, adam_eps,
                             normalize=normalize, chunk_size=chunk_size, batch_tokens=batch_tokens,
                             buffer_bytes=block_bytes if project_buffer_bytes is None else project_buffer_bytes,
                             block_bytes=block_bytes, method=method, device=device)
    finally:
        model.train(was_training)
    return out


def _whole_projected(model, examples, names, out, projector, adam_moments, adam_betas, adam_eps, *, normalize,
                     chunk_size, batch_tokens, buffer_bytes, block_bytes, method, device) -> None:
    """Chunks' gradients whole, preconditioned, buffered, then projected: for gradients that fit."""
    import torch

    dim = out.shape[1] if projector is None else projector.in_dim
    moments = flat_moments(adam_moments, names, device) if adam_moments is not None else None
    # Rows wait in one preallocated [rows, D] buffer (never concatenated: a copy of a full buffer
    # would double its memory), so that each regenerated projection tile serves all of them.
    # A kept matrix costs nothing to reuse: then, or without a projection, each chunk goes at once.
    buffered = projector is not None and not projector.keeps_matrix
    buffer, rows = None, []

    def emit(chunk_rows, flat) -> None:
        if projector is not None:
            flat = projector.project(flat)
        if normalize:
            flat = torch.nn.functional.normalize(flat, dim=1)
        out[chunk_rows] = flat.detach().cpu().numpy()

    def flush() -> None:
        if rows:
            emit(list(rows), buffer[: len(rows)])
            rows.clear()

    for chunk, flat in _iter_grad_chunks(model, examples, names, chunk_size=chunk_size, batch_tokens=batch_tokens,
                                         method=method):
        if moments is not None:
            # In place, a column block at a time: the elementwise update needs no [n, D] temporaries.
            # Its four temporaries stay under 64 MB whatever block_bytes lets the buffer hold
            # (sized by block_bytes, they added up to 4 GB beside a 4 GB buffer).
            step = max(1, min(block_bytes, 64 << 20) // max(1, 4 * 4 * flat.shape[0]))
            for s in range(0, dim, step):
                flat[:, s : s + step] = adam_precondition(flat[:, s : s + step], moments[0][s : s + step],
                                                          moments[1][s : s + step], betas=adam_betas, eps=adam_eps)
        if not buffered:
            emit(chunk, flat)
            continue
        if buffer is None:  # as many rows as the budget holds, at least a chunk, at most all of them
            # In the projection's compute dtype: a bf16 product casts its inputs anyway, and
            # half the bytes per row lets each regenerated tile serve twice the rows.
            dtype = projector.compute_dtype
            capacity = min(len(examples), max(chunk_size, len(chunk), buffer_bytes // (dtype.itemsize * dim)))
            buffer = torch.empty((capacity, dim), dtype=dtype, device=flat.device)
        if len(rows) + len(chunk) > buffer.shape[0]:
            flush()
        buffer[len(rows) : len(rows) + len(chunk)].copy_(flat)
        rows.extend(chunk)
        del flat
    flush()


def _stream_projected(model, examples, names, out, projector, adam_moments, adam_betas, adam_eps, *, normalize,
                      chunk_size, batch_tokens, block_bytes, method) -> None:
    """Chunk by chunk, gradient pieces of at most ``block_bytes`` preconditioned and projected as
    they are made: memory is the model, the chunk's activations, [chunk, d] and one block."""
    import torch

    from .projection import StreamProjection

    for chunk, pieces in _iter_grad_chunks(model, examples, names, chunk_size=chunk_size, batch_tokens=batch_tokens,
                                           method=method, piece_bytes=block_bytes):
        acc = StreamProjection(projector, len(chunk))
        for name, start, values in pieces:
            if adam_moments is not None:
                m, v = adam_moments[name]
                width = values.shape[1]
                m = m.reshape(-1)[start : start + width].to(values.device, torch.float32)
                v = v.reshape(-1)[start : start + width].to(values.device, torch.float32)
                values = adam_precondition(values, m, v, betas=adam_betas, eps=adam_eps)
            acc.add(values)
            del values
        flat = acc.result()
        if normalize:
            flat = torch.nn.functional.normalize(flat, dim=1)
        out[chunk] = flat.detach().cpu().numpy()


def per_example_grad_norms(model, examples: Sequence[Encoded], *, params: str | Sequence[str] = "all",
                           chunk_size: int = 8, batch_tokens: int = 4096, method: str = "auto") -> np.ndarray:
    """||gradient||_2 per example (GraNd) without keeping the [N, D] gradients."""
    names = grad_param_names(model, params)
    out = np.zeros(len(examples), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for chunk, flat in _iter_grad_chunks(model, examples, names, chunk_size=chunk_size, batch_tokens=batch_tokens,
                                             method=method):
            out[chunk] = flat.norm(dim=1).detach().cpu().numpy()
    finally:
        model.train(was_training)
    return out
