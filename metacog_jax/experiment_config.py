"""The default experiment config and model presets that the files in configs/ build on.

Every config file in configs/ defines `get_config(arg)` (big_vision style) and starts from
`default_config()`; fields are overridden on the command line as `--config.train.lr=1e-5`. The config is
locked after loading, so a typo in a field name fails instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from metacog_jax.sharding import DEFAULT_LOGICAL_AXIS_RULES

TASKS = ("none", "single", "pairwise", "multitask")
LORA_ALL_LINEAR = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

# name -> (model spec for load_model, suggested mesh (data, fsdp, tensor), note)
MODEL_PRESETS = {
    "smollm2_135m_gguf": ("smollm2-135m-instruct-gguf", (1, -1, 1), "embedded default, CPU ok"),
    "smollm2_135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", (1, -1, 1), "1 host, any device"),
    "smollm2_360m": ("HuggingFaceTB/SmolLM2-360M-Instruct", (1, -1, 1), "1 host"),
    "smollm2_1.7b": ("HuggingFaceTB/SmolLM2-1.7B-Instruct", (1, -1, 1), "1 GPU or v4-8"),
    "qwen2.5_0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", (1, -1, 1), "1 host"),
    "qwen2.5_1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", (1, -1, 1), "1 GPU or v4-8"),
    "qwen2.5_7b": ("Qwen/Qwen2.5-7B-Instruct", (1, -1, 4), "v4-16 / 4+ GPUs (fsdp x tensor)"),
    "llama3.1_8b": ("meta-llama/Llama-3.1-8B-Instruct", (1, -1, 4), "v4-16 / 4+ GPUs; gated on the hub"),
    "llama3.1_70b": ("meta-llama/Llama-3.1-70B-Instruct", (1, -1, 8), "v4-128 or larger; gated on the hub"),
    # Qwen3 checkpoints are instruct models with an optional reasoning mode; prompts turn it off.
    "qwen3_0.6b": ("Qwen/Qwen3-0.6B", (1, -1, 1), "1 host"),
    "qwen3_1.7b": ("Qwen/Qwen3-1.7B", (1, -1, 1), "1 GPU or v4-8"),
    "qwen3_4b": ("Qwen/Qwen3-4B", (1, -1, 1), "1 GPU (40 GB+) or v4-8"),
    "qwen3_8b": ("Qwen/Qwen3-8B", (1, -1, 4), "v4-16 / 4+ GPUs (fsdp x tensor)"),
    "qwen3_14b": ("Qwen/Qwen3-14B", (1, -1, 4), "v4-32 / 8 GPUs"),
    "qwen3_32b": ("Qwen/Qwen3-32B", (1, -1, 8), "v4-64 or larger"),
    # Gemma 3 4B-27B checkpoints are multimodal: the text decoder is loaded, the vision tower skipped.
    "gemma3_1b": ("google/gemma-3-1b-it", (1, -1, 1), "1 host; gated on the hub"),
    "gemma3_4b": ("google/gemma-3-4b-it", (1, -1, 1), "1 GPU (40 GB+) or v4-8; gated on the hub"),
    "gemma3_12b": ("google/gemma-3-12b-it", (1, -1, 4), "v4-16 / 4+ GPUs; gated on the hub"),
    "gemma3_27b": ("google/gemma-3-27b-it", (1, -1, 8), "v4-64 or larger; gated on the hub"),
    "tiny": ("random", (1, -1, 1), "2-layer random model for tests"),
}


def tiny_model_fields() -> ml_collections.ConfigDict:
    """Architecture of the random test model (SmolLM2 vocabulary so the embedded tokenizer fits)."""
    return ml_collections.ConfigDict(dict(
        model_type="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        qkv_bias=False, max_position_embeddings=2048, bos_token_id=1, eos_token_ids=(2,), pad_token_id=2))


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "smollm2_135m_gguf"
    c.model.name = MODEL_PRESETS["smollm2_135m_gguf"][0]  # load_model spec, or "random"
    c.model.tokenizer = "smollm2-135m-instruct-gguf"  # where a "random" model takes its tokenizer from
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"  # master weights
    c.model.random = tiny_model_fields()  # used when name == "random"
    # Stack the layers and run them with jax.lax.scan: one layer's code in each compiled step instead of L
    # copies (compile time flat in depth: what 32-80 layer models on a pod want). The same function; LoRA
    # must then target the same projections in every layer. Checkpoints convert between the layouts.
    c.model.scan_layers = False
    # Attention of the train step and one-pass scoring: auto = the Pallas splash kernel on TPU, cuDNN's on GPU,
    # the decoder's own blocked attention on CPU (models/attention_kernels.py); or reference | splash | cudnn.
    c.model.attention = "auto"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); one axis may be -1
    c.mesh.rules = tuple((k, v) for k, v in DEFAULT_LOGICAL_AXIS_RULES)

    c.data = ml_collections.ConfigDict()
    c.data.manual_dir = ""  # offline copy of the official files (e.g. ../shared/data); "" = procedural only
    c.data.tfds_dir = ""  # where TFDS builders write array_record files; "" = <workdir>/tfds
    c.data.domains = ("arithmetic",)  # in-domain: train + held-out test
    c.data.ood_domains = ("comparison",)  # out-of-domain: test only
    c.data.n_train = 200  # questions per in-domain domain, train split
    c.data.n_test = 60  # questions per domain (in-domain test split and each out-of-domain set)
    c.data.n_test_ood = 0  # questions per out-of-domain set; 0 = n_test
    c.data.test_fraction = 0.15
    c.data.procedural_levels = (1, 2, 3, 4, 5)  # difficulty levels drawn (cyclically) by procedural domains
    c.data.confidence_scale = "0-1"
    # Choosing settings without touching test: evaluate_on="validation" evaluates on a share
    # (validation_fraction) of the train questions carved out by hash, trains on the rest of train and
    # loads no test question. Final runs: evaluate_on="test" (the carve then stays in train).
    c.data.evaluate_on = "test"
    c.data.validation_fraction = 0.2
    # The answer prompt's instruction: a name in prompts.ANSWER_INSTRUCTIONS or a template with {hint}.
    c.data.answer_instruction = "sentence"
    # Your own question sets, no code: c.data.custom.<name> = ConfigDict(path=..., kind=..., fields=...), then
    # <name> in data.domains or data.ood_domains (keys and layouts: metacog_jax/data/sources/custom.py).
    c.data.custom = ml_collections.ConfigDict()

    c.sample = ml_collections.ConfigDict()
    c.sample.k = 10
    c.sample.temperature = 1.0
    c.sample.top_p = 1.0
    c.sample.max_new_tokens = 32
    c.sample.batch_size = 16

    # How answers are graded (data/graders.py): rule | judge | rule_then_judge (the judge only where the rule
    # is unsure). Open answers by open_rule: containment (a gold alias inside the answer) | exact | f1.
    c.grading = ml_collections.ConfigDict()
    c.grading.mode = "rule"
    c.grading.open_rule = "containment"
    c.grading.f1_threshold = 0.5  # open_rule "f1": token F1 against an alias at least this
    # The LLM judge: a preset, hub id, Hugging Face directory or GGUF file; "" = the config's own model (offline
    # that is the embedded 135M model judging its own answers: it tests the machinery, it is no reference).
    c.grading.judge = ""
    c.grading.judge_kinds = ("open",)  # the kinds the judge grades; the rules grade the others
    c.grading.judge_batch_size = 16
    c.grading.judge_max_new_tokens = 8  # "The answer is not correct." needs about 6
    c.grading.judge_cache = ""  # "" = <data workdir>/grading/judge_cache.jsonl

    c.targets = ml_collections.ConfigDict()
    c.targets.mode = "binned_accuracy"  # binned_accuracy | consistency | correctness
    # The answer a completion carries and whose correctness fits the bins: modal (METHOD) | greedy (the
    # model's own greedy answer, the one the evaluation scores; data/targets.py).
    c.targets.answer_source = "modal"
    c.targets.n_bins = 10
    c.targets.jitter = 0.05
    c.targets.balance = True
    c.targets.max_per_bin = 0  # 0 = rule of the target builder
    c.targets.balance_factor = 2.0  # balancing cap per target bin = ceil(factor x smallest bin), unless max_per_bin
    c.targets.per_domain_bins = True  # fit consistency bins per domain (False: one fit over all train questions)
    # Per-domain train mixing, "name=value" entries (override: targets.domain_weights=gsm8k=1,mmlu_pro=3):
    c.targets.domain_weights = ()  # relative train shares (subsample to these proportions); () = keep all
    c.targets.domain_caps = ()  # most train questions per domain, e.g. ("gsm8k=500",); () = no caps
    c.targets.pairs_per_question = 1
    c.targets.pair_scope = "domain"  # domain (partners from the same domain) | all
    # Which question of a training pair is labelled better: consistency (the higher raw consistency, as
    # AUC_c) | target (the higher un-jittered target) | bin_accuracy (= target; mode binned_accuracy only).
    c.targets.pair_label = "consistency"
    c.targets.pair_orders = "random"  # random (one seeded order per pair) | both (each pair twice, label flipped)

    c.train = ml_collections.ConfigDict()
    c.train.task = "multitask"  # none | single | pairwise | multitask
    c.train.steps = 100
    c.train.batch_size = 8  # global batch (rows)
    c.train.max_len = 512
    c.train.packing = True
    c.train.loss_positions = 160  # logits only at <= this many weighted positions per row (0 = all)
    # Attention reaches back at most this many tokens: -1 = the longest training example (packed examples
    # never see each other, so the loss is unchanged up to float rounding, and attention skips the key
    # blocks before the window), 0 = the whole row, N = N tokens (a longer example is an error).
    c.train.attention_window = -1
    # Memory knobs for large models (same loss and gradients, more recomputation): remat recomputes each
    # decoder layer's activations in the backward pass: none | matmuls (keep only the projections' outputs)
    # | full (keep only each layer's input); loss_chunk > 0 computes the LM head and loss this many
    # positions at a time, so the [B, P, V] float32 logits never exist whole (0 = all at once).
    c.train.remat = "none"
    c.train.loss_chunk = 0
    c.train.mix = 0.5  # share of pairwise examples in multitask runs
    # Share of the example stream given to replay examples: the base model's own greedy completions of the
    # answer prompt on the training questions (from the samples), so that fine-tuning on the confidence
    # tasks leaves the answers the evaluation reads as they were. 0 = none (METHOD trains the tasks only).
    c.train.replay = 0.0
    c.train.lr = 1e-4
    c.train.warmup_steps = 10
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.grad_accum = 1  # micro-batches per step
    c.train.loss = ml_collections.ConfigDict(dict(
        single=1.0, pairwise=1.0, answer=1.0, confidence=1.0, choice=1.0, format=1.0, brier=0.0, replay=1.0))
    c.train.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, dropout=0.0, targets=LORA_ALL_LINEAR))
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 2
    c.train.log_every = 1
    c.train.eval_every = 0  # 0 = no periodic eval loss
    c.train.peak_flops = 0.0  # FLOP/s for MFU; 0 = measure a matmul at start-up

    c.eval = ml_collections.ConfigDict()
    c.eval.n_pairs = 200  # pairs per dataset, each scored in both orders
    c.eval.n_pairs_ood = 0  # pairs per out-of-domain dataset; 0 = n_pairs
    c.eval.batch_size = 8
    c.eval.n_resamples = 1000
    c.eval.verbalized = False
    return c


def apply_model_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(MODEL_PRESETS)}")
    spec, mesh, _ = MODEL_PRESETS[preset]
    c.model.preset = preset
    c.model.name = spec
    c.mesh.shape = mesh
    return c


def domain_values(entries: Sequence[str], field: str, kind: type = float) -> dict[str, float | int] | None:
    """Reads a per-domain mapping kept as ``"name=value"`` strings: ``("gsm8k=1", "nq_open=0.5")`` ->
    ``{"gsm8k": 1.0, "nq_open": 0.5}``; an empty sequence -> None (the option is off).

    A tuple of strings is what a locked config can take from the command line
    (``--config.targets.domain_weights=gsm8k=1,nq_open=0.5``); a sub-config could not gain new keys.

    Raises:
      ValueError: naming ``field`` for an entry without ``=``, an empty name, a repeated name, or a value
        that is not a ``kind`` (int: a whole number).
    """
    if isinstance(entries, str):
        entries = (entries,)
    out: dict[str, float | int] = {}
    for entry in entries:
        name, has_value, text = str(entry).partition("=")
        name, text = name.strip(), text.strip()
        if not has_value or not name or not text:
            raise ValueError(f"config {field}: entry {entry!r} is not name=value (e.g. {field}=gsm8k=1,nq_open=2)")
        if name in out:
            raise ValueError(f"config {field}: domain {name!r} given twice")
        try:
            out[name] = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise ValueError(f"config {field}: {name}={text!r} is not {expected}") from None
    return out or None


def _validate_targets(c: ml_collections.ConfigDict) -> None:
    from metacog_jax.data import pairs, targets

    t = c.targets
    for name, allowed in (("mode", targets.MODES), ("answer_source", targets.ANSWER_SOURCES),
                          ("pair_label", targets.PAIR_LABELS),
                          ("pair_scope", pairs.SCOPES), ("pair_orders", pairs.ORDERS)):
        if t[name] not in allowed:
            raise ValueError(f"config targets.{name}={t[name]!r}; choose one of {', '.join(allowed)}")
    if t.pair_label in targets.PAIR_LABEL_ALIASES:
        source, mode = targets.PAIR_LABEL_ALIASES[t.pair_label]
        if t.mode != mode:
            raise ValueError(f"config targets.pair_label={t.pair_label!r} needs targets.mode={mode!r} (the "
                             f"target is the bin accuracy only there), got {t.mode!r}; use pair_label={source!r}")
    if not t.balance_factor > 0:
        raise ValueError(f"config targets.balance_factor={t.balance_factor} must be > 0")
    domains = set(c.data.domains)
    weights = domain_values(t.domain_weights, "targets.domain_weights", float)
    caps = domain_values(t.domain_caps, "targets.domain_caps", int)
    for field, mapping in (("targets.domain_weights", weights), ("targets.domain_caps", caps)):
        unknown = sorted(set(mapping or ()) - domains)
        if unknown:
            raise ValueError(f"config {field} names {unknown}, which are not in data.domains {sorted(domains)}")
        if mapping and not all(v >= 0 for v in mapping.values()):  # NaN fails too
            raise ValueError(f"config {field} must be >= 0, got {mapping}")
    if weights is not None:
        missing = sorted(domains - set(weights))
        if missing:
            raise ValueError(f"config targets.domain_weights has no weight for data.domains {missing}; give "
                             "every in-domain set one (0 leaves it out)")
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"config targets.domain_weights needs a positive weight, got {weights}")


def _validate_grading(c: ml_collections.ConfigDict) -> None:
    from metacog_jax.data import graders

    try:
        graders.settings_from_config(c)
    except ValueError as e:
        raise ValueError(f"config grading: {e}") from None
    if c.grading.judge_batch_size < 1 or c.grading.judge_max_new_tokens < 1:
        raise ValueError(f"config grading.judge_batch_size={c.grading.judge_batch_size} and "
                         f"grading.judge_max_new_tokens={c.grading.judge_max_new_tokens} must be >= 1")


def _validate_domains(c: ml_collections.ConfigDict) -> None:
    """data.custom: each set well declared, not named like a built-in set, and listed as its role says;
    every name in data.domains and data.ood_domains a built-in domain or a declared set."""
    from metacog_jax.data.sources import DOMAINS, custom_domains, unknown_domain_message

    custom = custom_domains(c.data.get("custom"))
    known = {**DOMAINS, **custom}
    for field in ("domains", "ood_domains"):
        for name in c.data[field]:
            if name not in known:
                raise ValueError(f"config data.{field}: {unknown_domain_message(name, known)}")
    lists = {"in_domain": "data.domains", "out_of_domain": "data.ood_domains"}
    for name, info in custom.items():
        for role, field in lists.items():
            if role != info.role and name in c.data[field.split(".")[1]]:
                raise ValueError(f"config data.custom.{name}.role={info.role!r}, but {field} lists {name!r}; list it "
                                 f"in {lists[info.role]} or set data.custom.{name}.role={role!r}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Cross-field checks that a typed override cannot catch."""
    if not c.data.domains:
        raise ValueError("config data.domains is empty: name at least one in-domain set, e.g. "
                         "data.domains=arithmetic")
    if c.train.task not in TASKS:
        raise ValueError(f"config train.task={c.train.task!r}; choose one of {', '.join(TASKS)}")
    if c.data.evaluate_on not in ("test", "validation"):
        raise ValueError(f"config data.evaluate_on={c.data.evaluate_on!r}; choose 'test' or 'validation'")
    if not 0.0 <= c.data.validation_fraction < 1.0 or (c.data.evaluate_on == "validation"
                                                        and c.data.validation_fraction == 0.0):
        raise ValueError(f"config data.validation_fraction={c.data.validation_fraction} must be in [0, 1), and "
                         "above 0 when data.evaluate_on='validation'")
    if not 0.0 <= c.train.mix <= 1.0:
        raise ValueError(f"config train.mix={c.train.mix} must be in [0, 1]")
    if not 0.0 <= c.train.replay < 1.0:
        raise ValueError(f"config train.replay={c.train.replay} (share of replay examples) must be in [0, 1)")
    if c.train.grad_accum < 1 or c.train.batch_size % c.train.grad_accum:
        raise ValueError(f"config train.batch_size={c.train.batch_size} must be a multiple of "
                         f"train.grad_accum={c.train.grad_accum}")
    if c.train.attention_window < -1:
        raise ValueError(f"config train.attention_window={c.train.attention_window} must be -1 (the longest "
                         "training example), 0 (whole rows) or a number of tokens")
    from metacog_jax.models.decoder import REMAT_POLICIES

    from metacog_jax.models.attention_kernels import IMPLEMENTATIONS

    if c.model.get("attention", "auto") not in IMPLEMENTATIONS:
        raise ValueError(f"config model.attention={c.model.attention!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if c.train.remat not in REMAT_POLICIES:
        raise ValueError(f"config train.remat={c.train.remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
    if c.train.loss_chunk < 0:
        raise ValueError(f"config train.loss_chunk={c.train.loss_chunk} must be >= 0 (positions per chunk of the "
                         "LM head and loss; 0 = all at once)")
    if c.train.lora.rank < 0:
        raise ValueError("config train.lora.rank must be >= 0 (0 = full fine-tuning)")
    _validate_targets(c)
    _validate_domains(c)
    _validate_grading(c)
