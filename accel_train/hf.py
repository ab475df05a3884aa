"""HuggingFace Gemma 3 and accel_train's model: the config, weights and tokenizer files, both ways.

An export loads with `transformers.AutoModelForCausalLM.from_pretrained` as `Gemma3ForCausalLM` and
computes the same logits. Our module names are HuggingFace's without the `model.` prefix, so weights
map by name; the config carries the shape, the layer types (from sliding_window_pattern) and both RoPE
bases. `--init_from HF_DIR` in training reads a folder the other way. transformers is an optional extra
(`pip install -e ".[hf]"`), imported only here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from accel_train.errors import UserError, first_line
from accel_train.model import ModelConfig
from accel_train.tokenizer import EOT_TEXT, BpeTokenizer, ByteTokenizer, HFTokenizer

HF_PREFIX = "model."  # HuggingFace keeps the decoder under `model.` and lm_head beside it
SLIDING, FULL = "sliding_attention", "full_attention"


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise UserError("HuggingFace export and --init_from need transformers: pip install -e \".[hf]\"") from None
    return transformers


def hf_config(cfg: ModelConfig, eot_token: int | None = None):
    """The Gemma3TextConfig of a model shape; end-of-text doubles as BOS, as every document follows one."""
    layer_types = [SLIDING if cfg.is_sliding(i) else FULL for i in range(cfg.num_hidden_layers)]
    if cfg.query_pre_attn_scalar != int(cfg.query_pre_attn_scalar):
        raise UserError(f"transformers' Gemma 3 needs a whole query_pre_attn_scalar, not {cfg.query_pre_attn_scalar}")
    return transformers_module().Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, sliding_window=cfg.sliding_window,
        layer_types=layer_types, query_pre_attn_scalar=int(cfg.query_pre_attn_scalar),
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=cfg.initializer_range,
        hidden_activation="gelu_pytorch_tanh",
        rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": cfg.rope_local_base_freq},
                         FULL: {"rope_type": "default", "rope_theta": cfg.rope_theta}},
        sliding_window_pattern=cfg.sliding_window_pattern, eos_token_id=eot_token, bos_token_id=eot_token,
        pad_token_id=None, architectures=["Gemma3ForCausalLM"])


def window_pattern(layer_types: list[str]) -> int:
    """sliding_window_pattern p such that exactly layers p-1, 2p-1, ... attend globally."""
    n = len(layer_types)
    pattern = layer_types.index(FULL) + 1 if FULL in layer_types else n + 1
    if layer_types != [SLIDING if (i + 1) % pattern else FULL for i in range(n)]:
        raise UserError(f"layer_types {layer_types} do not repeat a sliding_window_pattern; accel_train "
                        "needs every p-th layer global and the others sliding")
    return pattern


def model_config_from_hf(hf) -> ModelConfig:
    """Our ModelConfig of a Gemma3TextConfig; features our model lacks are refused, not dropped."""
    if hf.model_type != "gemma3_text":
        raise UserError(f"model_type is {hf.model_type!r}; --init_from needs a Gemma 3 text model ('gemma3_text')")
    rope = hf.rope_parameters or {}
    unsupported = {
        "rope scaling": any(rope.get(t, {}).get("rope_type", "default") != "default" for t in (SLIDING, FULL)),
        "attention logit softcapping": hf.attn_logit_softcapping is not None,
        "final logit softcapping": hf.final_logit_softcapping is not None,
        "attention bias": hf.attention_bias,
        "bidirectional attention": bool(getattr(hf, "use_bidirectional_attention", False)),
        f"activation {hf.hidden_activation}": hf.hidden_activation != "gelu_pytorch_tanh",
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise UserError(f"this Gemma 3 checkpoint uses {', '.join(found)}, which accel_train's model does not have")
    return ModelConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
        num_key_value_heads=hf.num_key_value_heads, head_dim=hf.head_dim, sliding_window=hf.sliding_window,
        sliding_window_pattern=window_pattern(list(hf.layer_types)),
        rope_local_base_freq=float(rope[SLIDING]["rope_theta"]), rope_theta=float(rope[FULL]["rope_theta"]),
        query_pre_attn_scalar=float(hf.query_pre_attn_scalar), max_position_embeddings=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps, tie_word_embeddings=hf.tie_word_embeddings,
        initializer_range=hf.initializer_range)


def _local_folder(hf_dir) -> str:
    """`hf_dir` as a path transformers will not take for a hub name: a missing folder is named as such."""
    if not Path(hf_dir).is_dir():
        raise UserError(f"init_from {hf_dir} is not a folder; give a local HuggingFace Gemma 3 folder "
                        "(config.json and weights, e.g. a downloaded google/gemma-3-270m or an export)")
    return str(hf_dir)


def hf_model_config(hf_dir) -> ModelConfig:
    """The model shape of a local HuggingFace Gemma 3 folder (its config.json)."""
    hf_dir = _local_folder(hf_dir)
    try:
        hf = transformers_module().AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a HuggingFace config from {hf_dir}: {first_line(err)}") from None
    return model_config_from_hf(hf)


def hf_state_dict(hf_dir) -> dict[str, torch.Tensor]:
    """The weights of a local HuggingFace Gemma 3 folder under our names, in fp32."""
    hf_dir = _local_folder(hf_dir)
    try:
        hf = transformers_module().AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                                  local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a HuggingFace model from {hf_dir}: {first_line(err)}") from None
    return {k.removeprefix(HF_PREFIX): v for k, v in hf.state_dict().items()}


def to_hf(model, eot_token: int | None = None):
    """A transformers Gemma3ForCausalLM holding a copy of our model's weights."""
    transformers = transformers_module()
    hf = transformers.Gemma3ForCausalLM(hf_config(model.config, eot_token))
    state = {(k if k.startswith("lm_head.") else HF_PREFIX + k): v for k, v in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def byte_level_backend():
    """The byte tokenizer as a `tokenizers` BPE with no merges: byte b is id b, end-of-text is 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOT_TEXT])
    return backend


def tiktoken_backend(encoding):
    """A tiktoken encoding (GPT-2's) as a `tokenizers` byte-level BPE, by transformers' converter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(pattern=encoding._pat_str, extra_special_tokens=encoding._special_tokens)
    converter.load_tiktoken_bpe = lambda _: encoding._mergeable_ranks  # the ranks in memory, not a rank file
    return converter.converted()


def save_tokenizer(tokenizer, out: Path) -> None:
    """Write tokenizer files that transformers' AutoTokenizer loads."""
    transformers = transformers_module()
    if isinstance(tokenizer, BpeTokenizer):
        backend = tokenizer.tokenizer
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.save(out)  # a HuggingFace tokenizer's own files, eos_token set to end-of-text
        return
    elif isinstance(tokenizer, ByteTokenizer):
        backend = byte_level_backend()
    else:
        backend = tiktoken_backend(tokenizer.encoding)
    if backend.token_to_id(EOT_TEXT) != tokenizer.eot_token:  # special tokens are numbered after the vocabulary
        print(f"note: writing no tokenizer files: {tokenizer.name}'s end-of-text id does not follow its vocabulary")
        return
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT_TEXT, bos_token=EOT_TEXT)
    fast.save_pretrained(str(out))
