"""A Gemma 3 decoder (the 270M shape by default) with the seed's `forward(idx, targets)` API.

Matches HuggingFace's `Gemma3ForCausalLM` numerically so that checkpoints move both ways
(see `export.py`), while staying one readable file in nanoGPT's manner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from accel_train.losses import linear_cross_entropy


@dataclass
class ModelConfig:
    """Shape of the model; the defaults are Gemma 3 270M with the GPT-2 vocabulary (the seed's)."""

    vocab_size: int = 50257
    hidden_size: int = 640
    intermediate_size: int = 2048
    num_hidden_layers: int = 18
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 256
    sliding_window: int = 512
    sliding_window_pattern: int = 6  # every 6th layer attends globally, the other 5 locally
    rope_local_base_freq: float = 10_000.0
    rope_theta: float = 1_000_000.0
    query_pre_attn_scalar: float = 256.0
    max_position_embeddings: int = 32_768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: "KVCache | None" = None):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2))
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(self, k, v)
        S = k.shape[2]
        if self.sliding and S > self.window:
            # Only past the window does a mask cost anything; within it, plain causal attention
            # keeps SDPA on its flash kernel.
            mask = sliding_window_mask(T, S, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
        elif T == S:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale, enable_gqa=True)
        else:
            mask = sliding_window_mask(T, S, S + 1, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


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

    def forward(self, x, rope, cache=None):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, cache))
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
    activation memory.
    """

    def __init__(self, cfg: ModelConfig, fused_loss: bool = True, checkpoint_layers: bool = False):
        super().__init__()
        self.config = cfg
        self.fused_loss, self.checkpoint_layers = fused_loss, checkpoint_layers
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
        for layer in self.layers:
            rope = rope_local if layer.self_attn.sliding else rope_global
            if self.checkpoint_layers and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, rope, cache, use_reentrant=False)
            else:
                x = layer(x, rope, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x), None
        if self.fused_loss:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if non_embedding else n
