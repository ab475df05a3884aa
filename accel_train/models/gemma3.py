"""A Gemma 3 decoder (the 270M shape by default) with the seed's `forward(idx, targets)` API.

Matches HuggingFace's `Gemma3ForCausalLM` numerically so that checkpoints move both ways
(see `hf.py`), while staying one readable file in nanoGPT's manner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from accel_train.data.tokens import IGNORE
from accel_train.models.losses import linear_cross_entropy
from accel_train.declarations import declare, even, multiple_of


@dataclass
class ModelConfig:
    """Shape of the model; the defaults are Gemma 3 270M with the GPT-2 vocabulary (the seed's)."""

    vocab_size: int = declare(50257, "tokens in the vocabulary (the data's meta.json must fit in it); at most 2^32, "
                                     "as token ids are stored in 32 bits", low=1, high=2**32)
    hidden_size: int = declare(640, "width of the residual stream", low=1)
    intermediate_size: int = declare(2048, "width of each MLP's hidden layer", low=1)
    num_hidden_layers: int = declare(18, "decoder layers", low=1)
    num_attention_heads: int = declare(4, "query heads per layer", low=1, rules=(multiple_of("num_key_value_heads"),))
    num_key_value_heads: int = declare(1, "key and value heads per layer (grouped-query attention)", low=1)
    head_dim: int = declare(256, "width of each attention head", low=1, rules=(even(" for RoPE"),))
    sliding_window: int = declare(512, "keys a local layer attends to", low=1)
    sliding_window_pattern: int = declare(6, "every Nth layer attends globally, the others locally", low=1)
    rope_local_base_freq: float = declare(10_000.0, "RoPE base of the local layers", above=0)
    rope_theta: float = declare(1_000_000.0, "RoPE base of the global layers", above=0)
    query_pre_attn_scalar: float = declare(256.0, "attention scores are scaled by its inverse square root", above=0)
    max_position_embeddings: int = declare(32_768, "the longest context (block_size is at most this)")
    rms_norm_eps: float = declare(1e-6, "added to the mean square in each RMSNorm", above=0)
    tie_word_embeddings: bool = declare(True, "the output head shares the embedding's weights")
    initializer_range: float = declare(0.02, "standard deviation of the initial weights", above=0)

    def is_sliding(self, layer_idx: int) -> bool:
        return (layer_idx + 1) % self.sliding_window_pattern != 0


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in fp32, scaled by (1 + w) so that a zero weight is the identity."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


def rope_tables(head_dim: int, base: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T, head_dim) for rotate-half RoPE, computed in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def sliding_window_mask(q_len: int, kv_len: int, window: int, device) -> torch.Tensor:
    """Boolean mask (True = attend) for causal attention limited to the last `window` keys.

    Queries are the last `q_len` of `kv_len` positions, which also serves cached generation.
    """
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def attention_rule(window: int | None = None, documents: torch.Tensor | None = None):
    """FlexAttention's `mask_mod` (True = attend): causal, within the last `window` keys if given, and within
    the query's own document if `documents` (batch x positions, see `document_ids`) is given.

    One rule for every path: FlexAttention takes it as is, and `dense_mask` evaluates it at every (query,
    key) pair for SDPA, so the CPU computes what the GPU kernel does."""
    def allowed(batch, head, q_idx, kv_idx):
        keep = kv_idx <= q_idx
        if window is not None:
            keep = keep & (kv_idx > q_idx - window)
        if documents is not None:
            keep = keep & (documents[batch, q_idx] == documents[batch, kv_idx])
        return keep
    return allowed


def dense_mask(rule, batch: int, length: int, device) -> torch.Tensor:
    """`rule` at every (query, key) pair of `length` positions: a (batch, 1, length, length) boolean attn_mask."""
    b = torch.arange(batch, device=device)[:, None, None]
    q_idx, kv_idx = torch.arange(length, device=device)[:, None], torch.arange(length, device=device)[None, :]
    return rule(b, None, q_idx, kv_idx).expand(batch, length, length)[:, None]


def document_ids(idx: torch.Tensor, separator: int) -> torch.Tensor:
    """The document of each position (batch x positions), numbered from the window's start: a new one begins
    at each `separator` token, which belongs to the document it opens (see docs/training.md)."""
    return (idx == separator).cumsum(dim=1)


def sliding_window_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """Causal attention to the last `window` keys with FlexAttention, queries and keys at the same positions.

    A dense mask makes SDPA compute every (query, key) pair; FlexAttention's block mask skips the blocks
    wholly outside the window, so the cost grows with block x window instead of block squared. Its kernel
    is generated by torch.compile, and it has no CPU backward: the model uses it only compiling on CUDA.
    """
    T = q.shape[2]
    block_mask = create_block_mask(attention_rule(window), None, None, T, T, device=q.device)
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.sliding = cfg.is_sliding(layer_idx)
        self.window = cfg.sliding_window
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: "KVCache | None" = None,
                mask: "torch.Tensor | BlockMask | None" = None):
        """`mask`, from `Gemma3.document_masks`, replaces the plain causal (or sliding-window) attention."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2))
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(self, k, v)
        S = k.shape[2]
        compiled_cuda = q.is_cuda and torch.compiler.is_compiling()
        if isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask, scale=self.scale, enable_gqa=True)
        elif mask is None and self.sliding and S > self.window and T == S and compiled_cuda:
            y = sliding_window_flex(q, k, v, self.window, self.scale)
        else:
            mask = self.causal_mask(T, S, x.device) if mask is None else mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               scale=self.scale, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def causal_mask(self, q_len: int, kv_len: int, device) -> torch.Tensor | None:
        """SDPA's mask for the last `q_len` of `kv_len` positions; None where plain causal attention will do."""
        if self.sliding and kv_len > self.window:
            # Only past the window does a mask cost anything; within it, plain causal attention
            # keeps SDPA on its flash kernel.
            return sliding_window_mask(q_len, kv_len, self.window, device)
        return None if q_len == kv_len else sliding_window_mask(q_len, kv_len, kv_len + 1, device)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, cache=None, mask=None):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, cache, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class KVCache:
    """Keys and values of every layer, grown one chunk at a time, so generation is linear in length.

    A sliding-window layer keeps only its last `window` positions: older ones can never be
    attended again, so its memory and cost per token stay bounded however long the sample.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.length = 0

    def append(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor):
        """The layer's cached keys and values followed by these (the last positions of both)."""
        key = id(layer)
        if key in self.keys:
            k = torch.cat((self.keys[key], k), dim=2)
            v = torch.cat((self.values[key], v), dim=2)
        keep = -layer.window if layer.sliding else 0
        self.keys[key], self.values[key] = k[:, :, keep:], v[:, :, keep:]
        return k, v


class Gemma3(nn.Module):
    """Gemma 3 text decoder; `forward(idx, targets=None)` returns `(logits, loss)` like the seed's model.

    With targets and `fused_loss` (the default) the logits are None: the loss is computed a chunk of
    tokens at a time (losses.py), so no (tokens x vocabulary) tensor is ever made. `fused_loss=False`
    is the seed's way: full logits, then cross-entropy. `checkpoint_layers` keeps only each layer's
    input for the backward pass and recomputes the rest: a third more compute for a fraction of the
    activation memory. With a `document_separator` token id, attention stays inside each document of a
    window (document masking, `document_masks`); a cached forward (generation) is one document. With
    `masked_loss` (conversations), targets equal to IGNORE are not trained on.
    """

    def __init__(self, cfg: ModelConfig, fused_loss: bool = True, checkpoint_layers: bool = False,
                 document_separator: int | None = None, masked_loss: bool = False):
        super().__init__()
        self.config = cfg
        self.fused_loss, self.checkpoint_layers, self.masked_loss = fused_loss, checkpoint_layers, masked_loss
        self.document_separator = document_separator
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.embed_scale = math.sqrt(cfg.hidden_size)
        self.apply(self._init_weights)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        # Small normal init as HuggingFace does for Gemma; norms start at zero, i.e. scale 1.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        cfg = self.config
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + T, device=idx.device)
        rope_local = rope_tables(cfg.head_dim, cfg.rope_local_base_freq, positions)
        rope_global = rope_tables(cfg.head_dim, cfg.rope_theta, positions)
        x = self.embed_tokens(idx)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)  # rounded as HF does; a CPU scalar: no GPU sync
        masks = self.document_masks(idx) if self.document_separator is not None and cache is None else {}
        for layer in self.layers:
            sliding = layer.self_attn.sliding
            rope, mask = (rope_local if sliding else rope_global), masks.get(sliding)
            if self.checkpoint_layers and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, rope, cache, mask, use_reentrant=False)
            else:
                x = layer(x, rope, cache, mask)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x), None
        if self.masked_loss:  # targets may be IGNORE: the mean over the others (0 where there are none)
            if self.fused_loss:
                return None, linear_cross_entropy(x, self.lm_head.weight, targets, ignore_index=IGNORE)
            logits = self.lm_head(x)
            summed = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                     ignore_index=IGNORE, reduction="sum")
            return logits, summed / (targets != IGNORE).sum().clamp(min=1)
        if self.fused_loss:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def document_masks(self, idx: torch.Tensor) -> dict:
        """{sliding?: mask} keeping the global and the sliding-window layers' attention inside each document of
        `idx`: FlexAttention block masks compiling on CUDA (the kernel skips the blocks between documents),
        SDPA's boolean masks elsewhere. Made once per forward pass, shared by the layers of each kind."""
        B, T = idx.shape
        documents = document_ids(idx, self.document_separator)
        windows = {False: None, True: self.config.sliding_window if T > self.config.sliding_window else None}
        if idx.is_cuda and torch.compiler.is_compiling():
            made = {w: create_block_mask(attention_rule(w, documents), B, None, T, T, device=idx.device)
                    for w in set(windows.values())}
        else:
            made = {w: dense_mask(attention_rule(w, documents), B, T, idx.device) for w in set(windows.values())}
        return {sliding: made[window] for sliding, window in windows.items()}

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if non_embedding else n
