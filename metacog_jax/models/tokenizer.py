"""Tokenizers: transformers' AutoTokenizer for Hugging Face directories, and one built from a GGUF file's
metadata (byte-level BPE vocab + merges + special tokens + chat template) for llama.cpp files.

Both return a `transformers.PreTrainedTokenizerFast`, so chat templates and decoding work the same way.
The GGUF tokenizer gives the same ids as transformers' own GGUF loader (tested), but reads only the
tokenizer keys, so it needs neither torch nor a pass over the weights.
"""

from __future__ import annotations

from pathlib import Path

# llama.cpp pre-tokenizer names -> split regex. Names absent here use GPT-2's byte-level regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_CONTROL = 3  # llama.cpp token type of special/control tokens
_USER_DEFINED = 4


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tokenizer_from_gguf(reader, source: str = "model.gguf"):
    """Build a PreTrainedTokenizerFast from an open `gguf.GGUFReader` (byte-level BPE files only)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{source}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2', as in "
            "SmolLM2, Llama 3 and Qwen2 files); load the model from its Hugging Face directory instead")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = _PRE_TOKENIZER_SPLITS.get(_field(reader, "tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _CONTROL]
    backend.add_special_tokens(specials)
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if user:
        backend.add_tokens(user)

    def tok(key):
        i = _field(reader, f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok("bos_token_id"), eos_token=tok("eos_token_id"),
        unk_token=tok("unknown_token_id"), pad_token=tok("padding_token_id") or tok("eos_token_id"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False)


def load_hf_tokenizer(model_dir: str | Path):
    """transformers AutoTokenizer from a local directory, with a pad token guaranteed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tokenizer, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Token ids that end a generation: the tokenizer's EOS plus chat end-of-turn markers it knows."""
    ids = set(extra)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return tuple(sorted(ids))
