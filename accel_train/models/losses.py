"""Cross-entropy fused with the output projection, a few thousand tokens at a time.

The plain loss makes logits for every token at once: at micro-batch 256 x 128 with Gemma 3's
262,144-token vocabulary that is 17 GiB in bf16 and twice that once cast to fp32, more than the
whole rest of training. Here each chunk of tokens gets its logits, its loss and its gradients
(softmax minus one-hot, times the projection) in the forward pass, and only the gradients are
kept: no (tokens x vocabulary) tensor outlives its chunk, and the backward pass only scales them.
Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as the plain path's
`F.cross_entropy(logits.float(), ...)` does, so both give the same loss.

With `ignore_index` (fine-tuning on conversations) a target equal to it counts for nothing: its loss and its
rows of the gradients are zeroed (a cost in hidden-size, not vocabulary-size, work) and the mean is over the
other targets. Without it the computation is exactly the one before masks existed.
"""

from __future__ import annotations

import torch

# Logits per chunk: 2**27 fp32 values are 512 MiB, large enough for full-speed matmuls on a GPU.
CHUNK_LOGITS = 2**27


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk for this vocabulary, a multiple of 128 where that fits (tensor-core friendly)."""
    tokens = max(1, CHUNK_LOGITS // vocab_size)
    return tokens // 128 * 128 or tokens


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else tensor.dtype


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor | None = None):
    """Summed loss of one chunk (of the targets `kept` says count: 1.0 or 0.0 each), with its fp32 logits and
    their log-sum-exp."""
    logits = (h @ weight.T).float()
    lse = torch.logsumexp(logits, dim=-1)
    losses = lse - logits.gather(1, targets[:, None]).squeeze(1)
    return (losses if kept is None else losses * kept).sum(), logits, lse


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype, kept):
        h_all, w = hidden.to(dtype), weight.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, len(targets), chunk):
            h = h_all[start:start + chunk]
            t = targets[start:start + chunk]
            k = None if kept is None else kept[start:start + chunk]
            chunk_loss, logits, lse = _chunk_loss(h, w, t, k)
            loss += chunk_loss
            grad = logits.sub_(lse[:, None]).exp_()  # softmax minus one-hot: d(summed loss)/d(logits)
            grad = grad.scatter_add_(1, t[:, None], grad.new_full((len(t), 1), -1.0)).to(dtype)
            if k is None:
                grad_hidden[start:start + chunk] = grad @ w
                grad_weight += (grad.T @ h).float()
            else:  # an ignored row's gradient is zero: zero its hidden state, and its gradient to it
                k = k[:, None].to(dtype)
                grad_hidden[start:start + chunk] = (grad @ w) * k
                grad_weight += (grad.T @ (h * k)).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.scale = 1.0 / len(targets) if kept is None else 1.0 / kept.sum().clamp(min=1)
        return loss * ctx.scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        g = grad_loss * ctx.scale
        return grad_hidden * g.to(grad_hidden.dtype), grad_weight * g.to(grad_weight.dtype), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None, ignore_index: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding every token's logits.

    hidden: (..., H); weight: (V, H); targets: (...) of class indices, all counted, or with `ignore_index` all but
    those equal to it (0 where none counts).
    Equals `F.cross_entropy((hidden @ weight.T).float().view(-1, V), targets.view(-1))`.
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    kept = None
    if ignore_index is not None:
        kept = (targets != ignore_index).float()
        targets = targets.masked_fill(targets == ignore_index, 0)
    chunk = chunk or chunk_tokens(weight.shape[0])
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, dtype, kept)
        h_all, w = hidden.to(dtype), weight.to(dtype)
        total = sum(_chunk_loss(h_all[s:s + chunk], w, targets[s:s + chunk], None if kept is None else
                                kept[s:s + chunk])[0] for s in range(0, len(targets), chunk))
        return total / (len(targets) if kept is None else kept.sum().clamp(min=1))
