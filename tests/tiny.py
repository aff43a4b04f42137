"""Tiny randomly initialised HF models, one per supported family, built from a config.

2 layers, d_model 32, 4 query heads (2 KV heads where the family has GQA), vocab 97.
Sliding-window families get a window of 4 (inputs are 11 tokens long) on one layer and
full attention on the other; Gemma 2 also soft-caps attention and final logits.
"""
from __future__ import annotations

import torch
import transformers as tf

TEXT_CAUSAL = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3", "gpt_neox", "gemma2", "gemma3", "phi3", "olmo2")
TEXT = TEXT_CAUSAL + ("bert", "roberta")
FAMILIES = TEXT + ("whisper", "wav2vec2", "hubert")

_DEC = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=64,
            vocab_size=97, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_ENC = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, vocab_size=97,
            max_position_embeddings=64)

# family -> (config class, model class, config kwargs)
_CAUSAL = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": 4}),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM,
              {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 8}),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {"num_key_value_heads": None, "rotary_pct": 0.5}),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM,
               {"head_dim": 8, "sliding_window": 4, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                "query_pre_attn_scalar": 16}),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
               {"head_dim": 8, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}),
    "smollm3": (tf.SmolLM3Config, tf.SmolLM3ForCausalLM, {"no_rope_layers": [1, 0]}),   # layer 1 without rotary
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {}),
    "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM, {}),
}


def reference_attn(family: str) -> str:
    """The attention implementation HF uses for the family by default: SDPA, or eager where
    the family does not support SDPA (Gemma 2: soft-capping)."""
    return "eager" if family == "gemma2" else "sdpa"


def tiny_hf(family: str, attn: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny random HF model of ``family`` in eval mode (``attn`` default: ``reference_attn``)."""
    torch.manual_seed(seed)
    if family in _CAUSAL:
        cfg_cls, cls, kw = _CAUSAL[family]
        cfg = cfg_cls(**{k: v for k, v in {**_DEC, **kw}.items() if v is not None})
        m = cls(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=97, n_positions=64, bos_token_id=1,
                            eos_token_id=2)
        m = tf.GPT2LMHeadModel(cfg)
    elif family in ("bert", "roberta"):
        cfg_cls, cls = (tf.BertConfig, tf.BertModel) if family == "bert" else (tf.RobertaConfig, tf.RobertaModel)
        m = cls(cfg_cls(**_ENC, **({"pad_token_id": 0} if family == "roberta" else {})))
    elif family == "whisper":
        cfg = tf.WhisperConfig(vocab_size=120, num_mel_bins=8, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4, d_model=32,
                               encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=30,
                               max_target_positions=40, decoder_start_token_id=100, eos_token_id=99,
                               pad_token_id=99, bos_token_id=100)
        m = tf.WhisperForConditionalGeneration(cfg)
    elif family in ("wav2vec2", "hubert"):
        kw = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                  conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                  num_conv_pos_embedding_groups=2, vocab_size=20)
        cls_cfg, cls = (tf.Wav2Vec2Config, tf.Wav2Vec2Model) if family == "wav2vec2" else (tf.HubertConfig, tf.HubertModel)
        m = cls(cls_cfg(**kw))
    else:
        raise ValueError(family)
    m.set_attn_implementation(attn or reference_attn(family))
    return m.to(dtype).eval()


def tiny_inputs(family: str, hf, seed: int = 1) -> dict:
    """Model kwargs: padded where the family takes a mask."""
    g = torch.Generator().manual_seed(seed)
    if family in TEXT:
        ids = torch.randint(3, hf.config.vocab_size, (2, 11), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    dtype = next(hf.parameters()).dtype
    if family == "whisper":
        feats = torch.randn(2, hf.config.num_mel_bins, 2 * hf.config.max_source_positions, generator=g)
        dec = torch.randint(0, 99, (2, 7), generator=g)
        return {"input_features": feats.to(dtype), "decoder_input_ids": dec}
    return {"input_values": torch.randn(2, 1600, generator=g).to(dtype)}


def tiny_batch(family: str, hf, seed: int = 1):
    """``tiny_inputs`` as a ``workbench.Batch`` with the query mask of padded text inputs."""
    from workbench.batch import Batch

    inputs = tiny_inputs(family, hf, seed)
    qm = {"self": inputs["attention_mask"].bool()} if "attention_mask" in inputs else {}
    return Batch(inputs, qm)


def scale_weights(hf, factor: float, *, positions: bool = True):
    """Multiply ``hf``'s weights by ``factor`` in place (larger weights: sharper attention, head
    effects far above round-off) and return it: every parameter of 2 or more dims, or with
    ``positions=False`` only the matrices (2-D) other than position embeddings."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() >= 2 if positions else p.dim() == 2 and "position" not in name and "wpe" not in name:
                p.mul_(factor)
    return hf


def word_level_llama(root, n_prompts: int, seed: int = 0):
    """A tiny Llama folder ``root/tiny`` (weights x6, so heads differ) with a word-level tokenizer
    that adds a BOS, and ``root/prompts.txt`` of ``n_prompts`` prompts of 2-14 words (ragged, so
    batches pad). Returns (model folder, prompt file)."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = [f"w{i}" for i in range(94)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf = scale_weights(tiny_hf("llama"), 6.0)
    hf.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 14))) for _ in range(n_prompts)]
    (root / "prompts.txt").write_text("\n".join(lines) + "\n")
    return root / "tiny", root / "prompts.txt"
