"""Tokenizers: transformers' AutoTokenizer for Hugging Face directories, and one built from a GGUF file's
metadata for llama.cpp files.

Both return a `transformers.PreTrainedTokenizerFast`, so chat templates and decoding work the same way.
The GGUF tokenizer reads only the tokenizer keys (`tokenizer.ggml.*`, `tokenizer.chat_template`), so it needs
neither torch nor a pass over the weights. Two kinds of `tokenizer.ggml.model` are supported:

* 'gpt2', byte-level BPE (SmolLM2, Llama 3, Qwen2/3): vocab + merges, the split regex named by
  `tokenizer.ggml.pre`. Same ids as transformers' own GGUF loader (tests/test_gguf.py).
* 'llama', SentencePiece (Gemma 1-3, Llama 2, Mistral, Phi-3): a BPE over the pieces with byte fallback to the
  256 `<0xNN>` pieces. The file has no merges; they are rebuilt from the pieces, best first (Gemma: file
  order; others: `tokenizer.ggml.scores`), as transformers' GGUF loader does. Spaces become "▁".
  Gemma files get no dummy prefix, and their user-defined pieces, which llama.cpp writes with " " for "▁"
  (runs of spaces: "  "), are spelled back. Same ids as transformers for Gemma.
  The other architectures get llama.cpp's dummy prefix (`tokenizer.ggml.add_space_prefix`, default on): a "▁"
  before every run of text, also one that starts with spaces or follows a special token, as SentencePiece,
  llama.cpp and e.g. Llama 2's own tokenizer.json (a Prepend normalizer) do, and as transformers does for
  Phi-3 files. For Llama/Mistral files transformers' GGUF loader uses a Metaspace pre-tokenizer instead,
  which leaves the prefix out in those two cases ("  hi" -> ▁▁hi, "<s>[INST]" -> [INST]); elsewhere the
  ids agree. tests/test_gguf_tokenizer.py checks all of this, also against a SentencePiece reference.

Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added tokens, matched
whole in the text; BOS/EOS are added as `tokenizer.ggml.add_bos_token` / `add_eos_token` say.
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
_CONTROL = 3  # llama.cpp token types (tokenizer.ggml.token_type): 1 normal, 2 unknown, 3 control,
_USER_DEFINED = 4  # 4 user-defined, 5 unused, 6 byte (<0x0A>)
_SPIECE = "\u2581"  # "▁", SentencePiece's visible space
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
_SUPPORTED = ("'gpt2' (byte-level BPE: SmolLM2, Llama 3, Qwen2/3)",
              "'llama' (SentencePiece: Gemma 1-3, Llama 2, Mistral, Phi-3)")


def tokenizer_from_gguf(gf, source: str = "model.gguf"):
    """Build a PreTrainedTokenizerFast from a parsed GGUF file (`gguf_file.read_gguf`; 'gpt2' or 'llama' models)."""
    from transformers import PreTrainedTokenizerFast

    kind = gf.get("tokenizer.ggml.model")
    extra = {}
    if kind == "gpt2":
        backend = _byte_level_backend(gf)
        add_bos = bool(gf.get("tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        backend = _sentencepiece_backend(gf)
        # llama.cpp adds BOS to a SentencePiece vocab unless the file says otherwise (transformers follows it).
        add_bos = bool(gf.get("tokenizer.ggml.add_bos_token", True))
        extra["add_eos_token"] = bool(gf.get("tokenizer.ggml.add_eos_token", False))
    else:
        raise ValueError(
            f"{source}: GGUF tokenizer model {kind!r} (tokenizer.ggml.model) is not supported; supported: "
            f"{', '.join(_SUPPORTED)}. Load the model from its Hugging Face directory instead")
    tokens = gf.get("tokenizer.ggml.tokens")

    def tok(key):
        i = gf.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok("bos_token_id"), eos_token=tok("eos_token_id"),
        unk_token=tok("unknown_token_id"), pad_token=tok("padding_token_id") or tok("eos_token_id"),
        chat_template=gf.get("tokenizer.chat_template"), add_bos_token=add_bos,
        clean_up_tokenization_spaces=False, **extra)


def _add_gguf_added_tokens(backend, tokens, types, in_vocab=None):
    """Control tokens as special added tokens; user-defined ones (only those `in_vocab` accepts) as plain
    added tokens. Both are matched whole in the raw text, before normalization, as llama.cpp does."""
    from tokenizers import AddedToken

    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _CONTROL]
    backend.add_special_tokens(specials)
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED and (in_vocab is None or in_vocab(t))]
    if user:
        backend.add_tokens(user)


def _byte_level_backend(gf):
    """'gpt2': byte-level BPE from the file's vocab and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = gf.get("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in gf.get("tokenizer.ggml.merges")]
    types = gf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = _PRE_TOKENIZER_SPLITS.get(gf.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    _add_gguf_added_tokens(backend, tokens, types)
    return backend


def _merges_from_pieces(tokens, priority):
    """BPE merges a SentencePiece-BPE vocab implies: every split of a piece into two pieces, best piece first
    (`priority[i]`, higher first); ties by longer left, then longer right part, then file order. That is the
    order transformers' GGUF loader derives, so the two tokenize alike."""
    index = {t: i for i, t in enumerate(tokens)}
    candidates = []
    for piece, prio in zip(tokens, priority):
        cuts = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        cuts = sorted(((a, b) for a, b in cuts if a in index and b in index), key=lambda m: (index[m[0]], index[m[1]]))
        candidates.extend((a, b, prio) for a, b in cuts)
    candidates.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))  # stable: equal keys keep file order
    return [(a, b) for a, b, _ in candidates]


def _sentencepiece_backend(gf):
    """'llama': SentencePiece BPE over the file's pieces, byte fallback to the <0xNN> pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = list(gf.get("tokenizer.ggml.tokens"))
    types = gf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    gemma = gf.get("general.architecture") in _GEMMA_ARCHS
    if gemma:
        # llama.cpp writes Gemma's user-defined pieces with " " for "▁" (its runs of spaces: "  "), but text is
        # normalized to "▁" before lookup, so spell them back. Gemma's scores do not follow its merge order,
        # the file order does (both as transformers' GGUF loader does).
        pieces = [t.replace(" ", _SPIECE) for t in tokens]
        priority = [-float(i) for i in range(len(tokens))]
        prefix = False
    else:
        pieces = tokens
        priority = [float(s) for s in gf.get("tokenizer.ggml.scores") or [-i for i in range(len(tokens))]]
        prefix = bool(gf.get("tokenizer.ggml.add_space_prefix", True))
    unk = gf.get("tokenizer.ggml.unknown_token_id")
    vocab = {t: i for i, t in enumerate(pieces)}
    merges = gf.get("tokenizer.ggml.merges")  # seldom there; else rebuilt from the pieces
    merges = [tuple(m.split(" ", 1)) for m in merges] if merges else _merges_from_pieces(pieces, priority)
    backend = Tokenizer(models.BPE(
        vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
        unk_token=tokens[int(unk)] if unk is not None else None))
    replace = normalizers.Replace(" ", _SPIECE)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(_SPIECE), replace]) if prefix else replace
    steps = [decoders.Replace(_SPIECE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(content=" ", left=1)] if prefix else steps)
    # A user-defined piece that was respelled is a plain vocab piece now (transformers skips it the same way).
    _add_gguf_added_tokens(backend, tokens, types, in_vocab=lambda t: t in vocab)
    return backend


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
    # ChatML (Qwen, SmolLM2), Llama 3, GPT-2 style, Llama 2 / Mistral, Gemma
    for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<end_of_turn>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return tuple(sorted(ids))
