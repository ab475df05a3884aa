"""HuggingFace Gemma 3 and accel_train's model: the config, weights and tokenizer files, both ways.

An export loads with `transformers.AutoModelForCausalLM.from_pretrained` as `Gemma3ForCausalLM` and
computes the same logits. Our module names are HuggingFace's without the `model.` prefix, so weights
map by name; the config carries the shape, the layer types (from sliding_window_pattern) and both RoPE
bases. `--init_from HF_DIR` in training reads a folder the other way. transformers is an optional extra
(`pip install -e ".[hf]"`), imported only here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from accel_train.errors import UserError, first_line
from accel_train.models.build import build_model
from accel_train.models.gemma3 import ModelConfig
from accel_train.data.chat import TEMPLATE_FILE
from accel_train.data.tokenizer import EOT_TEXT, PROBE, BpeTokenizer, ByteTokenizer, HFTokenizer

HF_PREFIX = "model."  # HuggingFace keeps the decoder under `model.` and lm_head beside it
SLIDING, FULL = "sliding_attention", "full_attention"
GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # reads tokenizer.json as it is, in transformers 4 and 5


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
    """The model shape of a local HuggingFace Gemma 3 folder (its config.json), checked against the names and
    shapes of the folder's weights: a folder that cannot fill every weight is refused before a run starts."""
    hf_dir = _local_folder(hf_dir)
    try:
        hf = transformers_module().AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a HuggingFace config from {hf_dir}: {first_line(err)}") from None
    cfg = model_config_from_hf(hf)
    check_weights(hf_dir, cfg, weight_shapes(hf_dir))
    return cfg


def weight_files(hf_dir) -> list[Path]:
    """The safetensors files of a folder: model.safetensors, or the shards its index names."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    folder = Path(hf_dir)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return [folder / SAFE_WEIGHTS_NAME]
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if not index.is_file():
        raise UserError(f"init_from {hf_dir} holds neither {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}; "
                        "accel_train reads HuggingFace weights in safetensors files")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = [folder / name for name in sorted(set(weight_map.values()))]
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # not JSON, or not a map of names to files
        raise UserError(f"cannot read the weight map of {index}: {first_line(err)}") from None
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise UserError(f"{index} names {', '.join(missing)}, missing from {hf_dir}")
    return shards


def weight_shapes(hf_dir) -> dict[str, list[int]]:
    """{HuggingFace name: shape} of every tensor in the folder's weights, read from the file headers alone."""
    shapes = {}
    for file in weight_files(hf_dir):
        try:
            with safe_open(str(file), framework="pt") as tensors:
                shapes.update({name: tensors.get_slice(name).get_shape() for name in tensors.keys()})
        except (SafetensorError, OSError) as err:
            raise UserError(f"cannot read the weights {file}: {first_line(err)}") from None
    return shapes


def hf_name(name: str) -> str:
    """HuggingFace's name of one of our weights: the decoder's under `model.`, lm_head beside it."""
    return name if name.startswith("lm_head.") else HF_PREFIX + name


def expected_shapes(cfg: ModelConfig) -> dict[str, list[int]]:
    """{HuggingFace name: shape} of every weight our model of `cfg` loads (a tied lm_head is the embedding)."""
    with torch.device("meta"):  # shapes only, no memory
        state = build_model(cfg).state_dict()
    if cfg.tie_word_embeddings:
        del state["lm_head.weight"]
    return {hf_name(name): list(tensor.shape) for name, tensor in state.items()}


def listed(names, shown: int = 3) -> str:
    """A few names of a sorted list and how many more: one error line, however many weights are wrong."""
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_weights(hf_dir, cfg: ModelConfig, found: dict[str, list[int]]) -> None:
    """Refuse weights that would leave a weight of the model unloaded (transformers fills those with random
    values), that the model has no place for, or whose shapes config.json contradicts: one line naming them."""
    expected = expected_shapes(cfg)
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    resized = [f"{name} is {found[name]} but config.json makes it {shape}"
               for name, shape in sorted(expected.items()) if name in found and found[name] != shape]
    problems = ([f"missing {listed(missing)}"] if missing else []) + (
        [f"unexpected {listed(unexpected)}"] if unexpected else []) + resized[:3]
    if problems:
        tied = " (which ties lm_head to the embedding)" if "lm_head.weight" in unexpected else ""
        raise UserError(f"the weights of init_from {hf_dir} do not fit its config.json{tied}: {'; '.join(problems)}")


def hf_state_dict(hf_dir) -> dict[str, torch.Tensor]:
    """The weights of a local HuggingFace Gemma 3 folder under our names, in fp32; every weight of the model
    comes from the folder (checked first), a tied lm_head being the embedding itself."""
    cfg = hf_model_config(hf_dir)
    state = {}
    for file in weight_files(hf_dir):
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError) as err:
            raise UserError(f"cannot read the weights {file}: {first_line(err)}") from None
    state = {name.removeprefix(HF_PREFIX): tensor.float() for name, tensor in state.items()}
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state


def to_hf(model, eot_token: int | None = None):
    """A transformers Gemma3ForCausalLM holding a copy of our model's weights."""
    transformers = transformers_module()
    hf = transformers.Gemma3ForCausalLM(hf_config(model.config, eot_token))
    state = {hf_name(k): v for k, v in model.state_dict().items()}
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


def save_tokenizer(tokenizer, out: Path, chat_template: str | None = None) -> bool:
    """Write tokenizer files that transformers' AutoTokenizer loads, with `chat_template` where given (as
    chat_template.jinja); False where it writes none."""
    transformers = transformers_module()
    if isinstance(tokenizer, BpeTokenizer):
        backend = tokenizer.tokenizer
    elif isinstance(tokenizer, HFTokenizer):
        # A tokenizer_config.json that names no class would load as the model type's (GemmaTokenizer), which
        # rebuilds a tokenizer of its own from the vocabulary instead of reading tokenizer.json as it is.
        exported = copy.copy(tokenizer)
        config = {key: value for key, value in (tokenizer.config or {}).items() if key != "chat_template"}
        exported.config = {"tokenizer_class": GENERIC_TOKENIZER_CLASS, **config}
        exported.save(out)  # a HuggingFace tokenizer's own files, eos_token set to end-of-text
        if chat_template is not None:
            (out / TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
        return True
    elif isinstance(tokenizer, ByteTokenizer):
        backend = byte_level_backend()
    else:
        backend = tiktoken_backend(tokenizer.encoding)
    if backend.token_to_id(EOT_TEXT) != tokenizer.eot_token:  # special tokens are numbered after the vocabulary
        print(f"note: writing no tokenizer files: {tokenizer.name}'s end-of-text id does not follow its vocabulary")
        return False
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT_TEXT, bos_token=EOT_TEXT)
    fast.chat_template = chat_template
    fast.save_pretrained(str(out))
    return True


def auto_tokenizer_ids(folder: Path, texts: list[str]) -> tuple[str, list[str], list[list[int]]]:
    """(class, texts, ids): how transformers' AutoTokenizer loads `folder` and encodes each text. Special tokens
    written in a text are left out of it: ours read them as text, transformers' as the token."""
    try:
        theirs = transformers_module().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        for special in theirs.all_special_tokens:
            texts = [text.replace(special, "") for text in texts]
        return type(theirs).__name__, texts, theirs(texts, add_special_tokens=False)["input_ids"]
    except Exception as err:  # transformers and tokenizers raise many kinds (a bare Exception too) for such files
        raise UserError(f"transformers cannot use the exported tokenizer: {first_line(err)}") from None


def check_tokenizer_files(tokenizer, folder: Path, texts: list[str]) -> None:
    """AutoTokenizer on `folder` (config.json and tokenizer files) must give `tokenizer`'s ids for a fixed probe
    and each text, or the exported model would be fed other tokens than it was trained on."""
    name, texts, ids = auto_tokenizer_ids(folder, [PROBE, *texts])
    for text, got in zip(texts, ids):
        expected = tokenizer.encode(text)
        if got != expected:
            start = next((i for i, pair in enumerate(zip(expected, got)) if pair[0] != pair[1]),
                         min(len(expected), len(got)))
            raise UserError(f"transformers loads the exported tokenizer as {name}, which encodes {text[:30]!r}... "
                            f"as {got[start:start + 4]} from token {start} on, where the data's {tokenizer.name} "
                            f"tokenizer gives {expected[start:start + 4]}")
