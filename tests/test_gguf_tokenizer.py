"""The SentencePiece ('llama') GGUF tokenizer, on tiny GGUF files written here (tokenizer metadata and one
dummy tensor), against transformers' own GGUF tokenizer and against a small SentencePiece-BPE reference.

Three files share one vocabulary (control tokens, all 256 <0xNN> byte pieces, "▁"-prefixed pieces, single
characters; scores = -position, so file order and score order agree, as Gemma's merge order needs):

* gemma3: no dummy prefix, spaces -> "▁", runs of spaces written with real spaces ("  ") as llama.cpp writes
  Gemma's user-defined pieces. Must equal transformers everywhere.
* phi3: transformers builds it as SentencePiece does (dummy "▁" before every run of text): must equal it.
* llama (Llama 2 / Mistral): transformers' GGUF loader uses a Metaspace pre-tokenizer here, which drops the
  dummy prefix when the text starts with a space or follows a special token ("  hi" -> ▁▁hi, not ▁▁▁hi;
  "<s>[INST]" -> [INST], not ▁[INST]). SentencePiece, llama.cpp (`is_prev_special`) and the models' own
  tokenizer.json put it there; we do too. Text that neither starts with a space nor follows a special token
  gets the same ids from both; for the rest we compare with the SentencePiece reference, and with
  transformers given the prefix space explicitly.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask the Hub

from metacog_jax.models.gguf_file import read_gguf  # noqa: E402
from metacog_jax.models.tokenizer import stop_token_ids, tokenizer_from_gguf  # noqa: E402

S = "\u2581"  # "▁"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
MESSAGES = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "the thing is 12"},
            {"role": "user", "content": "naïve 東京 🙂?"}]

TEXTS = ["hello world", "Hello world, the thing is 123.", "  hello  world", "   three spaces", " a",
         "the\n\nthing\nnew  12 3\t tab", "naïve 東京 🙂", "<start_of_turn>user\nhi<end_of_turn>\n",
         "hello<end_of_turn>world", "<unk> and <0x41> stay text", "trailing space ", ""]

PIECES = [S + "the", S + "t", "he", "th", S + "a", "ll", S + "he", S + "hell", "hell", "hel", "el", "lo", S + "hello",
          "ello", "wor", "ld", S + "world", S + "w", "or", "in", "ng", S + "in", "ing", S + "na", "ve", "ï", "東",
          "12", "3", "\n", "\n\n", "er", S + "is", "is", "on", S + "[", "IN", "ST", "INST", "]", "/", "?"]


def _vocab(arch: str) -> list[tuple[str, int]]:
    if arch == "gemma3":  # Gemma's layout: pad, eos, bos, unk, mask, ..., turn markers
        head = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN), ("<mask>", CONTROL),
                ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL), ("<unused0>", UNUSED)]
        spaces = [("  ", USER_DEFINED), ("   ", USER_DEFINED)]  # "▁▁", "▁▁▁" as llama.cpp writes them for Gemma
    else:
        head = [("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL), ("<pad>", CONTROL),
                ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL)]
        spaces = [(S * 2, NORMAL), (S * 3, NORMAL)]
    out = head + [(f"<0x{b:02X}>", BYTE) for b in range(256)] + [(p, NORMAL) for p in PIECES] + spaces
    chars = sorted(set("".join(PIECES) + "abcdefghijklmnopqrstuvwxyz,.!<>" + S) - {t for t, _ in out})
    return out + [(c, NORMAL) for c in chars]


def _write(path, arch: str, model: str = "llama", template: str | None = None, add_bos: bool = True,
           add_eos: bool = False):
    vocab = _vocab(arch)
    ids = {t: i for i, (t, _) in enumerate(vocab)}
    w = gguf.GGUFWriter(str(path), arch)
    # transformers builds a model config from the file before the tokenizer; these keys are enough
    w.add_context_length(128)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(4)
    w.add_value_length(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model(model)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_scores([-float(i) for i in range(len(vocab))])  # file order = score order
    w.add_token_types([ty for _, ty in vocab])
    bos, eos = ("<bos>", "<eos>") if arch == "gemma3" else ("<s>", "</s>")
    w.add_bos_token_id(ids[bos])
    w.add_eos_token_id(ids[eos])
    w.add_unk_token_id(ids["<unk>"])
    w.add_pad_token_id(ids["<pad>"])
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    if arch == "gemma3":
        w.add_add_space_prefix(False)
    w.add_chat_template(template or (GEMMA_TEMPLATE if arch == "gemma3" else LLAMA_TEMPLATE))
    w.add_tensor("token_embd.weight", np.zeros((len(vocab), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf_tok")
    return {arch: _write(d / f"{arch}.gguf", arch) for arch in ("gemma3", "llama", "phi3")}


def _ours(path):
    return tokenizer_from_gguf(read_gguf(path), str(path))


def _reference(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def pairs(files):
    return {arch: (_ours(p), _reference(p)) for arch, p in files.items()}


def _chat_ids(tok, **kw):
    out = tok.apply_chat_template(MESSAGES, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _spm_reference(path, text: str, dummy_prefix: bool) -> list[int]:
    """What SentencePiece BPE (llama.cpp's llm_tokenizer_spm) gives: control and unknown tokens matched whole
    (llama.cpp would match user-defined ones whole too; Gemma's all-space ones we merge as pieces, as
    transformers does, and this vocab has no other); each run of
    text between them escaped (" " -> "▁", a leading "▁" if `dummy_prefix`), then adjacent symbols merged
    while their concatenation is a piece, highest score first (ties: leftmost); a symbol that is no piece
    becomes its UTF-8 bytes as <0xNN> pieces."""
    r = gguf.GGUFReader(str(path))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    piece = {t.replace(" ", S): i for i, t in enumerate(tokens)}
    specials = [t for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN)]
    ids = []
    for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if part in specials:
            ids.append(tokens.index(part))
            continue
        if not part:
            continue
        sym = list((" " + part if dummy_prefix else part).replace(" ", S))
        while True:
            cands = [(scores[piece[a + b]], -k) for k, (a, b) in enumerate(zip(sym, sym[1:])) if a + b in piece]
            if not cands:
                break
            k = -max(cands)[1]
            sym[k:k + 2] = [sym[k] + sym[k + 1]]
        for s in sym:
            ids.extend([piece[s]] if s in piece else [piece[f"<0x{b:02X}>"] for b in s.encode()])
    return ids


def _with_explicit_prefix(text: str, specials) -> str:
    """The text with a space at its start and after each special token: what transformers' Metaspace needs
    to see to give SentencePiece's ids."""
    parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    return "".join(p if p in specials or not p else " " + p for p in parts)


@pytest.mark.parametrize("arch", ["gemma3", "phi3"])
def test_matches_transformers_gguf_tokenizer(pairs, arch):
    ours, ref = pairs[arch]
    assert ours.add_bos_token and not ours.add_eos_token
    assert (ours.bos_token, ours.eos_token, ours.unk_token, ours.pad_token) == \
        (ref.bos_token, ref.eos_token, ref.unk_token, ref.pad_token)
    for t in TEXTS:
        for special in (True, False):
            ids = ours.encode(t, add_special_tokens=special)
            assert ids == ref.encode(t, add_special_tokens=special), (t, special, ours.convert_ids_to_tokens(ids))
        ids = ours.encode(t)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (t, skip)
    for gen in (True, False):
        text = ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
        assert text == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
        assert _chat_ids(ours, add_generation_prompt=gen) == _chat_ids(ref, add_generation_prompt=gen)


def test_gemma3_is_sentencepiece_without_dummy_prefix(pairs, files):
    ours, _ = pairs["gemma3"]
    for t in TEXTS:
        assert ours.encode(t, add_special_tokens=False) == _spm_reference(files["gemma3"], t, False), t
        assert ours.decode(ours.encode(t), skip_special_tokens=True) == t.replace("<start_of_turn>", "").replace(
            "<end_of_turn>", "").replace("<unk>", "")  # lossless apart from the special tokens
    # the all-space pieces are found again; "▁in" comes before "▁▁" in the file, so it merges first
    pieces = ours.convert_ids_to_tokens(ours.encode("a   b  naïve 東京\n", add_special_tokens=False))
    assert pieces == ["a", S * 3, "b", S * 2, "n", "a", "ï", "ve", S, "東", "<0xE4>", "<0xBA>", "<0xAC>", "\n"]
    pieces = ours.convert_ids_to_tokens(ours.encode("b  inve", add_special_tokens=False))
    assert pieces == ["b", S, S + "in", "ve"]
    ids = ours.encode("hi")
    assert ids[0] == ours.bos_token_id and ids.count(ours.bos_token_id) == 1
    assert ours.convert_ids_to_tokens(ours.encode("<start_of_turn>user", add_special_tokens=False))[0] == \
        "<start_of_turn>"


def test_llama_puts_the_dummy_prefix_where_sentencepiece_does(pairs, files):
    ours, ref = pairs["llama"]
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    for t in TEXTS:
        for special in (True, False):
            ids = ours.encode(t, add_special_tokens=special)
            assert ids == ref.encode(_with_explicit_prefix(t, specials), add_special_tokens=special), (t, special)
            plain = not t.startswith(" ") and not any(s in t for s in specials)
            assert (ids == ref.encode(t, add_special_tokens=special)) == (plain or not t), (t, special)
        assert ours.encode(t, add_special_tokens=False) == _spm_reference(files["llama"], t, True), t
        ids = ours.encode(t)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (t, skip)
        if plain:
            assert ours.decode(ids, skip_special_tokens=True) == t
    # the documented difference, spelled out: "  a" is "▁▁▁a" to SentencePiece, "▁▁a" to Metaspace
    assert ours.convert_ids_to_tokens(ours.encode("  a", add_special_tokens=False)) == [S * 2, S + "a"]
    assert ref.convert_ids_to_tokens(ref.encode("  a", add_special_tokens=False)) == [S, S + "a"]
    assert ours.decode(ours.encode("  a"), skip_special_tokens=True) == "  a"
    text = ours.apply_chat_template(MESSAGES, tokenize=False)
    assert text == ref.apply_chat_template(MESSAGES, tokenize=False)
    assert text.startswith("<s>[INST] hello world [/INST] the thing is 12</s>[INST]")
    chat = _chat_ids(ours)
    assert chat == ref.encode(_with_explicit_prefix(text, specials), add_special_tokens=False)
    assert ours.convert_ids_to_tokens(chat)[:3] == ["<s>", S + "[", "INST"]


def test_add_bos_and_eos_flags_follow_the_file(tmp_path):
    path = _write(tmp_path / "eos.gguf", "gemma3", add_bos=False, add_eos=True)
    ours, ref = _ours(path), _reference(path)
    assert not ours.add_bos_token and ours.add_eos_token
    ids = ours.encode("hello world")
    assert ids == ref.encode("hello world") and ids[-1] == ours.eos_token_id and ours.bos_token_id not in ids


def test_unsupported_tokenizer_model_names_the_file(tmp_path):
    path = _write(tmp_path / "bert-ish.gguf", "llama", model="bert")
    with pytest.raises(ValueError, match=r"bert-ish\.gguf.*'bert'.*supported.*'gpt2'.*'llama'"):
        _ours(path)


def test_stop_token_ids_include_gemma_end_of_turn(pairs):
    ours, _ = pairs["gemma3"]
    vocab = ours.get_vocab()
    assert set(stop_token_ids(ours)) == {vocab["<eos>"], vocab["<end_of_turn>"]}
    assert ours.eos_token == "<eos>"
