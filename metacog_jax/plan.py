"""Ahead-of-time compilation for a TPU topology: does each step fit, and what does it cost, per chip.

With libtpu installed (the optional `tpu` extra: ``pip install -e '.[tpu]'``),
``jax.experimental.topologies.get_topology_desc`` gives the devices of a named TPU slice ("v5e:4x4") on
any machine, a CPU included, and ``jax.jit(...).lower(...).compile()`` compiles for them without running
anything. :func:`plan` does that for the steps a run takes, with abstract weights (``nnx.eval_shape``:
nothing allocated) of the config's model preset (``models/architectures.py``: no hub, no config.json),
sharded over the config's mesh with its logical-axis rules (``metacog_jax.sharding``):

* ``train``: the trainer's own jitted step (``trainer.jit_train_step``: optimizer from the config, LoRA or
  full, the same shardings and donation as a run);
* ``prefill`` / ``decode``: the two halves of the sampler's compiled generation (``sampling.prefill`` and
  ``sampling.decode_step``, which ``sampling._generate`` runs): the prompt pass that fills the KV cache and shares it between the K samples,
  and one sampled token for every row against that cache (the body of its decode loop);
* ``score``: the evaluation's one-pass confidence scorer (``evaluation.scoring._label_logprobs``);
* ``generate`` (on request): ``sampling._generate`` itself, prefill and the whole decode loop.

For each it reports, per chip, from ``compiled.memory_analysis()``: parameter, optimizer-state, other
argument (batch, KV cache), temporary and output bytes and their total against the chip's HBM; from
``compiled.cost_analysis()``: FLOPs and HBM bytes accessed per step; from the compiled HLO: the bytes its
collectives move; and a roofline estimate

    step time  = max(FLOPs / peak FLOP/s,  bytes accessed / HBM bandwidth,  collective bytes / ICI bandwidth)
    MFU        = model FLOPs / (chips x peak FLOP/s x step time)

with model FLOPs 6 N tokens (full fine-tuning), 4 N tokens + 6 N_LoRA tokens (LoRA), 2 N tokens (forward
passes), N the parameter count. These are estimates from the compiler's own counts and published peak
figures (:data:`TPU_CHIPS`), not measurements. XLA counts a loop body once: the train step's micro-batches
(``train.grad_accum``) are scaled to every pass (:func:`repeated_costs`) and scanned layers extrapolated
(:func:`layer_extrapolated_costs`). A step that does not fit says by how much and which knob would help,
also when XLA:TPU refuses to compile it for want of HBM (:func:`hbm_refusal`: XLA's own figures, no
costs). Nothing here chooses a remat policy, layer scan or loss chunking: it compiles whatever the config
selects.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

GiB = 1024 ** 3
STEPS = ("train", "prefill", "decode", "score", "generate")
DEFAULT_STEPS = ("train", "prefill", "decode", "score")
INSTALL_HINT = ("libtpu is not installed: `metacog plan` needs the optional `tpu` extra, "
                "`pip install -e '.[tpu]'` (or `pip install -c constraints.txt \"jax[tpu]==0.10.2\"`; "
                "`make test` installs it)")


class MissingTpuExtra(RuntimeError):
    """libtpu (the `tpu` extra) is not installed."""


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """Published per-chip figures: bf16 peak FLOP/s, HBM capacity (bytes) and bandwidth (bytes/s),
    bidirectional inter-chip interconnect (ICI) bandwidth (bytes/s)."""

    name: str
    peak_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    ici_bandwidth: float


# Sources (Cloud TPU system-architecture pages, docs.cloud.google.com/tpu/docs/<version>, read 2026):
#   v4:  275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s; ICI is not on the page: 6 links x 45 GB/s each way
#        (jax-ml "How to Scale Your Model", TPU chapter) = 540 GB/s bidirectional.
#   v5e: 197 TFLOP/s bf16, 16 GB HBM at 819 GB/s, 400 GB/s bidirectional ICI per chip.
#   v5p: 459 TFLOP/s bf16, 95 GiB HBM at 2,765 GB/s, 1,200 GB/s bidirectional ICI per chip.
#   v6e: 918 TFLOP/s bf16, 32 GB HBM at 1,638 GB/s (1,640 elsewhere), 800 GB/s bidirectional ICI per chip.
# The v5e and v6e pages' HBM "GB" are binary: XLA:TPU reports 15.75 GiB usable on a v5e and 31.25 GiB on a v6e
# (30.75 on a v4, megacore), each a little under 16 and 32 GiB (32 GB would be 29.80 GiB), so every capacity
# here is in GiB. The runtime keeps that little for itself, so a step within a few percent of the capacity
# may still not fit (XLA:TPU then refuses to compile it: see hbm_refusal).
TPU_CHIPS: dict[str, TpuChip] = {
    "v4": TpuChip("v4", 275e12, 32 * GiB, 1200e9, 540e9),
    "v5e": TpuChip("v5e", 197e12, 16 * GiB, 819e9, 400e9),
    "v5p": TpuChip("v5p", 459e12, 95 * GiB, 2765e9, 1200e9),
    "v6e": TpuChip("v6e", 918e12, 32 * GiB, 1638e9, 800e9),
}
# v5e and v6e chips form 2-D tori (AxB); v4 and v5p 3-D ones (AxBxC; libtpu also takes AxB for them).
_TWO_D = ("v5e", "v6e")
_TOPOLOGY = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[TpuChip, tuple[int, ...]]:
    """"v5e:4x4" -> (the v5e chip, (4, 4)).

    Raises:
      ValueError: a malformed name or a TPU generation without figures here (naming the known ones).
    """
    match = _TOPOLOGY.match(name.strip())
    if not match:
        raise ValueError(f"topology {name!r}: expected GENERATION:AxB or GENERATION:AxBxC, e.g. v5e:4x4 or "
                         f"v5p:4x4x2 (generations: {', '.join(TPU_CHIPS)})")
    generation, dims = match.groups()
    if generation not in TPU_CHIPS:
        raise ValueError(f"topology {name!r}: unknown TPU generation {generation!r}; known: {', '.join(TPU_CHIPS)}")
    shape = tuple(int(d) for d in dims.split("x"))
    if generation in _TWO_D and len(shape) != 2:
        raise ValueError(f"topology {name!r}: {generation} slices are 2-D tori, named AxB (e.g. {generation}:2x4 "
                         f"or {generation}:4x4), not AxBxC")
    return TPU_CHIPS[generation], shape


def _topology_options(generation: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """What get_topology_desc needs beyond the name: v4 as one device per chip (megacore, as a v4 runs; libtpu's
    default is one per TensorCore, which jax.make_mesh refuses), and a single-chip v5e/v6e slice as a host
    of one chip (libtpu's default host holds 2x2 chips and would reject v5e:1x1)."""
    if generation == "v4":
        return {"chip_config_name": "megacore"}
    if generation in _TWO_D and math.prod(shape) == 1:
        return {"chips_per_host_bounds": (1, 1, 1)}
    return {}


def _quiet_libtpu_env() -> None:
    """On a host without TPU chips: tell libtpu what it would otherwise look up (and warn about) and let it
    load beside another process that holds its lock (nothing here drives a chip)."""
    from metacog_jax.platforms import tpu_chips_present

    if tpu_chips_present():
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # any: only compiles; names its own target
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(name: str) -> list:
    """The devices of a named TPU slice (compile targets; nothing runs on them).

    Raises:
      MissingTpuExtra: libtpu is not installed (the message says how to install it).
      ValueError: an unknown or impossible topology (libtpu's reason included).
    """
    from metacog_jax.platforms import libtpu_installed

    chip, shape = parse_topology(name)
    if not libtpu_installed():
        raise MissingTpuExtra(INSTALL_HINT)
    _quiet_libtpu_env()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=name.strip(), platform="tpu",
                                            **_topology_options(chip.name, shape))
    except Exception as e:  # libtpu raises JaxRuntimeError(INVALID_ARGUMENT: ...)
        raise ValueError(f"topology {name!r}: libtpu cannot build it: {e}") from None
    return list(desc.devices)


# -- the model ------------------------------------------------------------------------------------------
def model_architecture(config, num_layers: int | None = None):
    """The config's ModelConfig without reading any weights: the random model's fields, the preset's
    entry in models/architectures.py, or a local Hugging Face directory's config.json.

    Raises:
      ValueError: a model the plan cannot know offline (naming model.name and model.preset).
    """
    from metacog_jax.experiment_config import MODEL_PRESETS
    from metacog_jax.models.architectures import ARCHITECTURES
    from metacog_jax.models.build import random_model_config
    from metacog_jax.models.config import read_hf_config

    m = config.model
    if m.name == "random":
        arch = random_model_config(m.random)
    elif m.preset in ARCHITECTURES and m.name == MODEL_PRESETS.get(m.preset, ("",))[0]:
        arch = ARCHITECTURES[m.preset]
    elif (Path(m.name) / "config.json").is_file():
        arch = read_hf_config(m.name)
    else:
        raise ValueError(f"config model.name={m.name!r} (model.preset={m.preset!r}): its architecture is not "
                         f"known offline; use a preset from metacog_jax/models/architectures.py "
                         f"({', '.join(ARCHITECTURES)}) or a local Hugging Face directory")
    return with_layers(arch, num_layers) if num_layers else arch


def with_layers(arch, num_layers: int):
    """The architecture cut to its first `num_layers` layers (their layer types with them)."""
    return arch.replace(num_layers=int(num_layers), layer_types=arch.layer_types[:int(num_layers)])


def abstract_model(config, arch, lora: bool):
    """The Decoder (with the config's LoRA adapters when `lora`) as ShapeDtypeStructs: nothing allocated."""
    from flax import nnx

    from metacog_jax.models import decoder
    from metacog_jax.models import lora as lora_lib
    from metacog_jax.models.attention_kernels import resolve

    dt, pdt = decoder.parse_dtype(config.model.dtype), decoder.parse_dtype(config.model.param_dtype)
    lo = config.train.lora

    def build():
        model = decoder.Decoder(arch, dtype=dt, param_dtype=pdt, rngs=nnx.Rngs(config.seed),
                                scan_layers=bool(config.model.get("scan_layers", False)),
                                attention=resolve(str(config.model.get("attention", "auto")), "tpu"))
        if lora:
            lora_lib.apply_lora(model, lo.targets, lo.rank, lo.alpha, lo.dropout, seed=config.seed)
        return model

    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(build)


def plan_mesh(config, devices):
    """The config's (data, fsdp, tensor) mesh over `devices`, laid out as jax.make_mesh lays out a slice."""
    import jax

    from metacog_jax import sharding as sharding_lib

    sizes = sharding_lib.resolve_mesh_shape(tuple(config.mesh.shape), len(devices))
    return jax.make_mesh(sizes, sharding_lib.MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(sharding_lib.MESH_AXES))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        itemsize = getattr(leaf.dtype, "itemsize", None)  # a PRNG key dtype has one, and no numpy dtype
        total += math.prod(shape) * (itemsize if itemsize is not None else np.dtype(leaf.dtype).itemsize)
    return total


# -- the steps ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StepSpec:
    """What to compile: a jitted function, its abstract arguments, and what the report needs."""

    name: str
    fn: Any
    args: tuple
    kwargs: dict
    shape: str  # e.g. "16 x 512 tokens"
    model_flops: float  # FLOPs the model needs per step (6N/4N+6N_lora per trained token; forward_flops)
    params: Any  # the arguments that are model weights (for per-chip bytes)
    optimizer: Any = None
    knobs: str = ""  # the config fields that size this step (for the advice)
    # A step that runs most of its work in a loop XLA's cost analysis counts once (the train step's
    # micro-batches under train.grad_accum): the loop's trip count, and the part of the step outside the loop
    # compiled alone (the optimizer update), whose costs are not repeated (see repeated_costs).
    repeats: int = 1
    once: "StepSpec | None" = None
    # The model FLOPs counting what the step computes (train_flops; a forward step's model_flops already do).
    used_flops: float | None = None


def _layer_params(arch) -> float:
    """The parameters of the layers alone: less the embedding (and an untied LM head) and the final norm."""
    embed = arch.vocab_size * arch.hidden_size
    return arch.num_params() - embed * (1 if arch.tie_word_embeddings else 2) - arch.hidden_size


def train_flops(arch, tokens: int, logit_rows: int, n_lora: int = 0) -> float:
    """Model FLOPs of a train step counting what it computes: the layers at every token and the vocabulary
    projection only at its `logit_rows` (the loss positions the trainer gathers), 6 x each (forward, and
    backward to activations and weights) in full fine-tuning; with LoRA (`n_lora` > 0) 4 x the frozen
    weights (no weight gradient) + 6 x the adapters. The issue's 6N (4N + 6N_LoRA) per token counts the
    embedding lookup and the head at every token: 12% more for Llama-3.1-8B at 160 loss positions of 512."""
    base = 4.0 if n_lora else 6.0
    head = arch.vocab_size * arch.hidden_size
    return base * _layer_params(arch) * tokens + base * head * logit_rows + 6.0 * n_lora * tokens


def forward_flops(arch, tokens: int, logit_rows: int) -> float:
    """Model FLOPs of a forward pass that computes logits only at some rows (the sampler's prefill at each
    prompt's last token, the scorer at its readout rows): 2 x the layers' parameters per token plus 2 x the
    vocabulary projection per row of logits. The embedding lookup does no multiply; counting it and the head
    at every token (2N per token) gave an MFU above 100% for a shallow model (`--num_layers`)."""
    return 2.0 * _layer_params(arch) * tokens + 2.0 * arch.vocab_size * arch.hidden_size * logit_rows


def _placed(mesh, shape: tuple[int, ...], dtype="int32"):
    """An input of the sampler or scorer placed as they place it (multihost.place): rows over data x fsdp
    when those divide them, else whole on every chip (multihost.row_sharding)."""
    import jax
    import jax.numpy as jnp

    from metacog_jax import multihost

    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=multihost.row_sharding(mesh, shape[0], len(shape)))


def _sharded_state(state, mesh, rules):
    from metacog_jax import sharding as sharding_lib

    return sharding_lib.abstract_with_shardings(state, sharding_lib.state_shardings(state, mesh, rules))


def loss_chunks(config) -> tuple[int, int]:
    """(the positions per row the train step's loss covers, the chunks train.loss_chunk splits them into)."""
    t = config.train
    positions = min(int(t.loss_positions) or int(t.max_len), int(t.max_len))
    chunk = int(t.get("loss_chunk", 0))
    return positions, (-(-positions // chunk) if chunk else 1)


def train_spec(config, arch, mesh) -> StepSpec:
    """trainer.jit_train_step over abstract states and a [train.batch_size, train.max_len] batch."""
    import jax
    import jax.numpy as jnp

    from metacog_jax.models import lora as lora_lib
    from metacog_jax.train import trainer

    t = config.train
    lora = t.lora.rank > 0
    model = abstract_model(config, arch, lora)
    graphdef, trainable, frozen, other = trainer.split_model(model, config)
    tx, _ = trainer.make_optimizer(t)
    window = max(int(t.attention_window), 0)  # -1 (the longest example) is unknown offline: whole rows
    step_fn, in_sh = trainer.jit_train_step(graphdef, config, tx, mesh, trainable, frozen, other,
                                            attention_window=window)
    opt_state = jax.eval_shape(tx.init, trainable)
    b, length = int(t.batch_size), int(t.max_len)
    floats = ("loss_weights", "decision_mask", "decision_value")
    batch = {k: jax.ShapeDtypeStruct((b, length), jnp.float32 if k in floats else jnp.int32, sharding=in_sh[4][k])
             for k in trainer.BATCH_KEYS}
    step = jax.ShapeDtypeStruct((), jnp.int32)
    tokens = b * length
    n = arch.num_params()
    n_lora = lora_lib.count_params(trainable) if lora else 0
    flops = (4.0 * n * tokens + 6.0 * n_lora * tokens) if lora else 6.0 * n * tokens
    used = train_flops(arch, tokens, b * loss_chunks(config)[0], n_lora)
    from metacog_jax import sharding as sharding_lib

    # The states as the step takes them, sharded (a refused step's "other arguments" are what is left of its
    # arguments' per-chip bytes once parameters and optimizer state are taken out: whole states overstated it).
    sharded = [sharding_lib.abstract_with_shardings(tree, sh)
               for tree, sh in zip((trainable, opt_state, frozen, other), in_sh)]
    accum = int(t.grad_accum)
    once = None
    if accum > 1:  # the micro-batches run in a lax.scan; the optimizer update once, after it
        once = StepSpec("train update", _update_fn(tx, in_sh[0], in_sh[1]), (trainable, opt_state, trainable), {},
                        "", 0.0, None)
    return StepSpec("train", step_fn, (*sharded, batch, step), {},
                    f"{b} x {length} tokens" + (f" ({accum} micro-batches)" if accum > 1 else ""), flops,
                    (sharded[0], sharded[2]), sharded[1],
                    "train.batch_size (with train.grad_accum to keep the global batch), train.max_len",
                    repeats=accum, once=once, used_flops=used)


def _update_fn(tx, trainable_sharding, opt_sharding):
    """The part of trainer.make_train_step after its gradients: the optimizer update and the gradient norm,
    jitted with the step's shardings and donation (its costs are counted once however many micro-batches)."""
    import jax
    import optax

    def update(trainable, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, optax.tree.norm(grads)

    return jax.jit(update, in_shardings=(trainable_sharding, opt_sharding, trainable_sharding),
                   out_shardings=(trainable_sharding, opt_sharding, None), donate_argnums=(0, 1))


def _base_state(config, arch, mesh):
    """(graphdef, sharded abstract state) of the model the sampler and scorer run: the base model, LoRA
    adapters merged (trainer.model_for_eval)."""
    from flax import nnx

    from metacog_jax.models.build import rules_from_config

    graphdef, state = nnx.split(abstract_model(config, arch, lora=False))
    return graphdef, _sharded_state(state, mesh, rules_from_config(config))


def _prefill(graphdef, state, tokens, segments, positions, *, samples: int, new_tokens: int):
    """The sampler's own prompt half (sampling.prefill): fill the KV cache, logits at the last prompt
    position, the cache shared by the `samples` continuations of each prompt."""
    from flax import nnx

    from metacog_jax import sampling

    return sampling.prefill(nnx.merge(graphdef, state), tokens, segments, positions, samples, new_tokens)


def _decode_step(graphdef, state, cache, tokens, positions, keys):
    """One token of the sampler's decode loop for every row (sampling.decode_step): the model on the
    cache, logits, a draw from them (sampling.sample_inverse_cdf)."""
    from flax import nnx

    from metacog_jax import sampling

    logits, cache = sampling.decode_step(nnx.merge(graphdef, state), cache, tokens, positions)
    return sampling.sample_inverse_cdf(logits, keys), cache


def _cache_shardings(cache, mesh, rules):
    """KV cache arrays sharded like activations: rows over (data, fsdp), kv heads over tensor."""
    import jax
    from jax.sharding import NamedSharding

    from metacog_jax import sharding as sharding_lib

    names = {5: ("layers", "batch", "kv_heads", "length", "kv"), 4: ("batch", "kv_heads", "length", "kv"),
             2: ("batch", "length"), 0: ()}

    def one(leaf):
        spec = sharding_lib.logical_to_mesh_spec(names[leaf.ndim], rules, leaf.shape, mesh, name="kv cache")
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, cache)


def _sampling_sizes(config, prompt_len: int):
    from metacog_jax.sampling import length_bucket

    s = config.sample
    return int(s.batch_size), int(s.k), int(s.max_new_tokens), length_bucket(prompt_len)


def prefill_spec(config, arch, mesh, prompt_len: int) -> StepSpec:
    import functools

    import jax

    b, k, n, p = _sampling_sizes(config, prompt_len)
    graphdef, state = _base_state(config, arch, mesh)
    fn = jax.jit(functools.partial(_prefill, graphdef, samples=k, new_tokens=n))
    args = (state, _placed(mesh, (b, p)), _placed(mesh, (b, p)), _placed(mesh, (b, p)))
    return StepSpec("prefill", fn, args, {}, f"{b} prompts x {p} tokens", forward_flops(arch, b * p, b), state,
                    knobs="sample.batch_size, the prompt length")


def decode_spec(config, arch, mesh, prompt_len: int) -> StepSpec:
    import functools

    import jax

    from metacog_jax.models.build import rules_from_config

    b, k, n, p = _sampling_sizes(config, prompt_len)
    graphdef, state = _base_state(config, arch, mesh)
    prompt = _placed(mesh, (b, p))
    _, cache = jax.eval_shape(functools.partial(_prefill, graphdef, samples=k, new_tokens=n), state, prompt,
                              prompt, prompt)
    shardings = _cache_shardings(cache, mesh, rules_from_config(config))
    cache = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), cache, shardings)
    rows = b * k
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=_placed(mesh, (rows,)).sharding)
    fn = jax.jit(functools.partial(_decode_step, graphdef), donate_argnums=(1,))
    args = (state, cache, _placed(mesh, (rows,)), _placed(mesh, (rows,)), keys)
    return StepSpec("decode", fn, args, {}, f"{rows} rows x 1 token ({p} + {n} cached)",
                    forward_flops(arch, rows, rows), state,
                    knobs="sample.batch_size, sample.k, sample.max_new_tokens")


def generate_spec(config, arch, mesh, prompt_len: int) -> StepSpec:
    """sampling._generate itself (prefill + the whole decode loop; cost counts its loop body once)."""
    import jax

    from metacog_jax import sampling

    b, k, n, p = _sampling_sizes(config, prompt_len)
    graphdef, state = _base_state(config, arch, mesh)
    params = sampling.SamplingParams(max_new_tokens=n, temperature=float(config.sample.temperature),
                                     top_p=float(config.sample.top_p), num_samples=k)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (graphdef, state, _placed(mesh, (b, p)), _placed(mesh, (b, p)), _placed(mesh, (b, p)),
            _placed(mesh, (b,), "uint32"), key)
    kwargs = dict(params=params, stop_ids=tuple(arch.eos_token_ids) or (0,), pad_id=0)
    # XLA's cost counts the decode loop's body once, so the model FLOPs match: the prompts + one token per row.
    return StepSpec("generate", sampling._generate, args, kwargs, f"{b} prompts x {p} + {k} x {n} tokens",
                    forward_flops(arch, b * p + b * k, b + b * k), state,
                    knobs="sample.batch_size, sample.k, sample.max_new_tokens")


# A confidence scale's labels as a token trie, sized like the default "0-1" scale (101 labels "0.00" ..
# "1.00", a few tokens each, the digits sharing trie nodes). The scorer's cost is the forward pass over
# prefix + nodes; these only size the readout, which the tokenizer (not needed offline) would fix exactly.
_SCORE_NODES, _SCORE_LABELS, _SCORE_LABEL_TOKENS = 24, 101, 5


def score_spec(config, arch, mesh, prompt_len: int) -> StepSpec:
    import jax
    import jax.numpy as jnp

    from metacog_jax import sharding as sharding_lib
    from metacog_jax.evaluation import scoring
    from metacog_jax.sampling import length_bucket

    b = int(config.eval.batch_size)
    try:  # the scorer refuses a batch it cannot split (scoring.label_logprobs checks the same)
        sharding_lib.check_batch_divisible(b, mesh)
    except ValueError as e:
        raise ValueError(f"config eval.batch_size={b}: the scorer shards its rows over data x fsdp, and {e}; "
                         f"use a multiple of the data x fsdp size") from None
    t = length_bucket(prompt_len + _SCORE_NODES, per_octave=scoring.BUCKETS_PER_OCTAVE)
    graphdef, state = _base_state(config, arch, mesh)
    m, labels, width = _SCORE_NODES, _SCORE_LABELS, _SCORE_LABEL_TOKENS
    small = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    args = (graphdef, state, _placed(mesh, (b, t)), _placed(mesh, (b,)), small((m,), "int32"),
            small((m, m), "bool"), small((labels, width), "int32"), small((labels, width), "int32"),
            small((labels, width), "bool"))
    return StepSpec("score", scoring._label_logprobs, args, {}, f"{b} x {t} tokens", forward_flops(arch, b * t, b * (m + 1)),
                    state, knobs="eval.batch_size")


_BUILDERS: dict[str, Callable] = {
    "train": lambda c, a, m, p: train_spec(c, a, m),
    "prefill": prefill_spec,
    "decode": decode_spec,
    "score": score_spec,
    "generate": generate_spec,
}


# -- compiling and reading the compiled step ------------------------------------------------------------
_SHAPE = re.compile(r"\b(pred|s4|s8|s16|s32|s64|u4|u8|u16|u32|u64|f8e4m3fn|f8e5m2|bf16|f16|f32|f64|c64|c128)"
                    r"\[([0-9,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8, "s16": 16, "u16": 16,
         "bf16": 16, "f16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64,
         "c128": 128}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z\-]*)\((.*)$")
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += count * _BITS[dtype] // 8
    return total


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*[({]")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)")


def _collective_fusion_kind(called: str) -> str | None:
    """The collective a fusion computation's name says it is (``%all-reduce-scatter.2`` -> reduce-scatter)."""
    kind = next((c for c in sorted(_COLLECTIVES, key=len, reverse=True) if c in called), None)
    return "reduce-scatter" if kind == "all-reduce" and "scatter" in called else kind


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes each kind of collective moves per device in a compiled (SPMD-partitioned) HLO module.

    Each collective counts the larger of its operands and its result (an all-gather its gathered result, a
    reduce-scatter its unscattered input), twice for an all-reduce (reduce-scatter + all-gather): a ring
    algorithm's traffic with (n - 1) / n taken as 1. Collectives fused on TPU (a fusion calling
    ``%all-reduce-scatter`` and the like) count once, as the fusion, by the name of the computation they
    call; the collectives inside that computation (an ``all-reduce`` with a channel_id inside
    ``%all-reduce-scatter``) are the same traffic and are not counted again. ``-done`` halves of async
    pairs are skipped. A collective inside a loop body counts once, and so does one that XLA:TPU splits
    over several async collective fusions (each fusion holds an instruction with the collective's
    ``channel_id``; the pieces move one collective's bytes between them).
    """
    sizes: dict[str, int] = {}
    lines: list[tuple[str, str, str, str, str]] = []  # (computation, name, result, op, rest)
    calls: dict[str, set[str]] = {}  # computation -> computations its instructions call
    fused: set[str] = set()  # computations called by a collective fusion
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("(", 1)[0]:
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, result, op, rest = match.groups()
        sizes[name] = _shape_bytes(result)
        lines.append((computation, name, result, op, rest))
        called = _CALLED.findall(rest)
        calls.setdefault(computation, set()).update(called)
        if op == "fusion" and called and _collective_fusion_kind(called[0]):
            fused.add(called[0])
    inside, todo = set(), list(fused)  # the collective fusions' bodies and whatever they call in turn
    while todo:
        c = todo.pop()
        if c not in inside:
            inside.add(c)
            todo.extend(calls.get(c, ()))
    found: list[tuple[str, str, str]] = []
    channels: set[str] = set()
    for computation, name, result, op, rest in lines:
        if op.endswith("-done") or computation in inside:
            continue
        kind = None
        base = op[:-len("-start")] if op.endswith("-start") else op
        if base in _COLLECTIVES:
            kind = base
        elif op == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", rest)
            if called:
                kind = _collective_fusion_kind(called.group(1))
        if kind is not None:
            channel = re.search(r"\bchannel_id=(\d+)", rest)
            if channel:
                if channel.group(1) in channels:
                    continue
                channels.add(channel.group(1))
            found.append((kind, result, rest.split(")", 1)[0]))
    out = {kind: 0 for kind in _COLLECTIVES}
    for kind, result, operands in found:
        result_bytes = _shape_bytes(result)
        if result.lstrip().startswith("("):  # async start: (operand, result, ...) -> the largest
            result_bytes = max((_shape_bytes(m.group(0)) for m in _SHAPE.finditer(result)), default=0)
        operand_bytes = sum(sizes.get(op.strip().lstrip("%"), 0) for op in operands.split(",") if op.strip())
        moved = max(result_bytes, operand_bytes)
        out[kind] += 2 * moved if kind == "all-reduce" else moved
    return out


def replicated_large_arrays(compiled, args, min_elements: int = 2 ** 20) -> list[str]:
    """Inputs and outputs of a compiled step with at least `min_elements` elements that are fully
    replicated over the mesh: each is a whole copy on every chip. Empty when the step shards every large
    array (what a plan of a big model needs)."""
    import jax

    found = []
    in_shardings = jax.tree.leaves(compiled.input_shardings[0])
    in_shapes = [leaf for leaf in jax.tree.leaves(args) if hasattr(leaf, "shape")]
    out_shapes = [leaf for leaf in jax.tree.leaves(compiled.out_info) if hasattr(leaf, "shape")]
    out_shardings = jax.tree.leaves(compiled.output_shardings)
    for side, shapes, shardings in (("input", in_shapes, in_shardings), ("output", out_shapes, out_shardings)):
        for i, (leaf, sharding) in enumerate(zip(shapes, shardings)):
            if math.prod(leaf.shape) >= min_elements and sharding.is_fully_replicated:
                found.append(f"{side} {i}: {leaf.dtype}{list(leaf.shape)}")
    return found


@dataclasses.dataclass
class StepPlan:
    """One compiled step, per chip. Bytes are per chip; times in seconds; estimates are estimates.

    A step XLA:TPU refused to compile for want of HBM (`refused` says so, with XLA's figures) has
    fits=False, total_bytes the bytes XLA said it needs, hbm_bytes the bytes XLA said it can use, and no
    cost figures (flops .. mfu None)."""

    step: str
    shape: str
    compile_s: float
    params_bytes: int
    optimizer_bytes: int
    other_argument_bytes: int
    temp_bytes: int
    output_bytes: int
    code_bytes: int
    total_bytes: int
    hbm_bytes: float
    fits: bool
    flops: float | None
    bytes_accessed: float | None
    collective_bytes: dict[str, int]
    compute_s: float | None
    hbm_s: float | None
    ici_s: float | None
    step_s: float | None
    bound: str | None
    model_flops: float
    mfu: float | None
    xla_optimal_s: float | None
    replicated: list[str]
    costs: str  # "xla" (XLA's counts of the whole step), "extrapolated" (scanned: from 1 and 2 layers),
    # "one loop body" (scanned, not extrapolated: the layers' loop counted once; step time and MFU too low/high)
    # or "refused" (XLA:TPU refused to compile it: no costs)
    advice: list[str]
    micro_batches: int = 1  # > 1: FLOPs, bytes and collectives scaled from XLA's one count of the loop body
    refused: str = ""  # XLA:TPU's reason when it refused to compile the step for want of HBM
    # The train step's loss in chunks of positions (train.loss_chunk): how many, and where its costs come from:
    # "whole" (the same step compiled with the loss in one chunk: XLA counts a loop body once, so the chunked
    # step's own counts hold one chunk's LM head and loss) or "one chunk" (that compile needed more HBM than a
    # chip has: the chunked step's counts, short of n - 1 chunks, so the step time is low and the MFU high).
    loss_chunks: int = 1
    loss_costs: str = ""
    # The MFU of the model FLOPs the step computes (train_flops: the LM head only at the loss positions and no
    # embedding FLOPs; a forward step's `mfu` already counts that way). None where there are no costs.
    used_mfu: float | None = None

    @property
    def over_bytes(self) -> float:
        return max(self.total_bytes - self.hbm_bytes, 0.0)


def _roofline(chip: TpuChip, flops: float, bytes_accessed: float, ici_bytes: float) -> dict[str, float | str]:
    """Per-chip roofline: each term is the time that resource alone needs; the step takes the largest."""
    terms = {"compute": flops / chip.peak_flops, "hbm": bytes_accessed / chip.hbm_bandwidth,
             "ici": ici_bytes / chip.ici_bandwidth}
    bound = max(terms, key=terms.get)
    return dict(compute_s=terms["compute"], hbm_s=terms["hbm"], ici_s=terms["ici"], step_s=terms[bound],
                bound=bound)


def estimated_mfu(model_flops: float, chips: int, chip: TpuChip, step_s: float) -> float:
    """model FLOPs / (chips x peak FLOP/s x step time); 0 when the step time is 0."""
    return model_flops / (chips * chip.peak_flops * step_s) if step_s > 0 else 0.0


def _advice(spec: StepSpec, plan: dict, config, mesh) -> list[str]:
    """Which knob would bring a step that does not fit within HBM (empty when it fits)."""
    over = plan["total_bytes"] - plan["hbm_bytes"]
    if over <= 0:
        return []
    sizes = dict(mesh.shape)
    if plan.get("refused"):
        out = [f"over by {over / GiB:.2f} GiB per chip: {plan['refused']} (XLA's figures, from its refusal to "
               f"compile the step: no cost figures)"]
        fixed = plan["params_bytes"] + plan["optimizer_bytes"] + plan["other_argument_bytes"]
    else:
        out = [f"over by {over / GiB:.2f} GiB per chip ({plan['total_bytes'] / GiB:.2f} of "
               f"{plan['hbm_bytes'] / GiB:.2f})"]
        fixed = plan["total_bytes"] - plan["temp_bytes"]
    weights = plan["params_bytes"] + plan["optimizer_bytes"]
    if weights > plan["hbm_bytes"] * 0.5:
        hint = [f"weights{' and optimizer state' if plan['optimizer_bytes'] else ''} take {weights / GiB:.2f} GiB "
                f"per chip: spread them over more chips (mesh now data={sizes['data']}, fsdp={sizes['fsdp']}, "
                f"tensor={sizes['tensor']}; a larger slice)"]
        if spec.name == "train" and config.train.lora.rank == 0:
            hint.append("LoRA (train.lora.rank > 0: no optimizer state for the base)")
        if config.model.param_dtype == "float32":
            hint.append("bfloat16 parameters (model.param_dtype)")
        out.append("; ".join(hint))
    if sizes["data"] > 1:
        out.append(f"mesh data={sizes['data']} holds a full copy of the weights per data group: move it onto fsdp")
    if plan["temp_bytes"] > 0 and fixed < plan["hbm_bytes"]:
        share = (plan["hbm_bytes"] - fixed) / plan["temp_bytes"]
        out.append(f"activations/temporaries take {plan['temp_bytes'] / GiB:.2f} GiB: about {share:.0%} of them "
                   f"would fit: a smaller {spec.knobs}"
                   + "".join(f"; {knob}" for knob in (_train_memory_knobs(config) if spec.name == "train" else ())))
    if config.model.dtype == "float32":
        out.append("bfloat16 compute (model.dtype) halves activations")
    return out


def _train_memory_knobs(config) -> list[str]:
    """The train step's memory knobs not yet at their most frugal setting, as advice."""
    out = []
    remat = str(config.train.get("remat", "none"))
    if remat != "full":
        out.append(f"rematerialization (train.remat={'matmuls or full' if remat == 'none' else 'full'}; now {remat})")
    chunk = int(config.train.get("loss_chunk", 0))
    out.append("the loss in chunks of positions (train.loss_chunk)" if chunk == 0 else
               f"a smaller train.loss_chunk (now {chunk} positions)")
    return out


def _costs(compiled) -> tuple[float, float, dict[str, int]]:
    """(FLOPs, HBM bytes accessed, collective bytes by kind) per chip of a compiled step, as XLA counts."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), collective_bytes(compiled.as_text())


def layer_extrapolated_costs(one, two, num_layers: int):
    """A step's costs at `num_layers` from its costs at 1 and 2 (unscanned) layers: c1 + (L - 1)(c2 - c1).
    XLA's cost analysis counts a while loop's body once, so a scanned model's own counts miss L - 1 layers."""
    grow = lambda a, b: a + (num_layers - 1) * (b - a)
    coll = {k: int(grow(one[2].get(k, 0), two[2].get(k, 0))) for k in set(one[2]) | set(two[2])}
    return grow(one[0], two[0]), grow(one[1], two[1]), coll


def repeated_costs(step, once, repeats: int):
    """A step's costs when its loop runs `repeats` times: XLA counts the loop body once, so the step's count
    is body + once (`once`: the part outside the loop, compiled alone); this gives repeats x body + once,
    body = step - once (at least 0). Each argument is (FLOPs, bytes accessed, collective bytes by kind)."""
    scale = lambda a, b: b + repeats * max(a - b, 0.0)
    coll = {k: int(scale(step[2].get(k, 0), once[2].get(k, 0))) for k in set(step[2]) | set(once[2])}
    return scale(step[0], once[0]), scale(step[1], once[1]), coll


_SIZE = r"([\d.]+)\s*([KMGTP]?)i?B?"
# XLA:TPU's compile-time refusals: "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required
# for HLO temporaries (22.66G) exceeds available HBM (15.75G)." and "RESOURCE_EXHAUSTED: XLA:TPU compile
# permanent error. Ran out of memory in memory space hbm. Used 63.80G of 30.75G hbm. ..." (units binary).
_REFUSALS = (re.compile(rf"required for ([\w ]+?) \({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
             re.compile(rf"Used {_SIZE} of {_SIZE} hbm"))
_HLO_TEMP = re.compile(rf"HLO temp\s+{_SIZE}")
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}


def hbm_refusal(message: str) -> dict[str, Any] | None:
    """XLA:TPU's refusal to compile a step that does not fit in HBM, read from its error message: the bytes
    it needs (`required`), the bytes it can use (`available`), the temporaries' bytes where it says them
    (`temporaries`, else 0) and a line saying so (`reason`). None for any other message."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    size = lambda number, unit: float(number) * _UNITS[unit.upper()]
    match = _REFUSALS[0].search(message)
    if match:
        what, required, available = match.group(1), size(*match.group(2, 3)), size(*match.group(4, 5))
        temporaries = required if "temporar" in what else 0.0
    else:
        match = _REFUSALS[1].search(message)
        if not match:
            return None
        what, required, available = "its buffers", size(*match.group(1, 2)), size(*match.group(3, 4))
        temp = _HLO_TEMP.search(message)
        temporaries = size(*temp.group(1, 2)) if temp else 0.0
    reason = (f"XLA:TPU refused to compile it: {what} need {required / GiB:.2f} GiB of the "
              f"{available / GiB:.2f} GiB it can use")
    return dict(required=required, available=available, temporaries=temporaries, reason=reason)


def _array_leaves(tree) -> list:
    import jax

    return [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]


def _refused_plan(spec: StepSpec, refusal: dict, mesh, config, compile_s: float) -> StepPlan:
    """The StepPlan of a step XLA refused to compile for want of HBM: its figures, the advice, no costs."""
    params = per_device_bytes(spec.params)
    opt = per_device_bytes(spec.optimizer) if spec.optimizer is not None else 0
    other = max(per_device_bytes(_array_leaves((spec.args, spec.kwargs))) - params - opt, 0)
    temporaries = int(refusal["temporaries"])
    # A refusal that names only the temporaries ("HLO temporaries (44.3G) exceed available HBM (15.75G)", the
    # whole HBM) leaves out the arguments the chip holds beside them; one that names all the buffers used
    # covers them: the larger of the two is what the step needs.
    total = max(int(refusal["required"]), params + opt + other + temporaries)
    plan = dict(step=spec.name, shape=spec.shape, compile_s=compile_s, params_bytes=params, optimizer_bytes=opt,
                other_argument_bytes=other, temp_bytes=temporaries,
                output_bytes=0, code_bytes=0, total_bytes=total,
                hbm_bytes=refusal["available"], fits=False, flops=None, bytes_accessed=None, collective_bytes={},
                compute_s=None, hbm_s=None, ici_s=None, step_s=None, bound=None, model_flops=spec.model_flops,
                mfu=None, xla_optimal_s=None, replicated=[], costs="refused", micro_batches=spec.repeats,
                refused=refusal["reason"])
    plan["advice"] = _advice(spec, plan, config, mesh)
    return StepPlan(**plan)


def _spec_costs(specs, num_layers: int):
    """The costs of one spec's compile, or extrapolated to `num_layers` from two (at 1 and 2 layers)."""
    counts = [_costs(s.fn.lower(*s.args, **s.kwargs).compile()) for s in specs]
    return layer_extrapolated_costs(*counts, num_layers) if len(counts) == 2 else counts[0]


def compile_step(spec: StepSpec, chip: TpuChip, mesh, config, cost_specs=None, num_layers: int = 0,
                 chunked_cost_specs: Callable[[], list | None] | None = None, chunks: int = 1) -> StepPlan:
    """Lower and compile one step for the mesh's devices and read its memory and cost. `cost_specs`: the
    same step compiled for its costs: at 1 and 2 unscanned layers (for a scanned model: its FLOPs, bytes and
    collectives are extrapolated from theirs to `num_layers`), or once (a train step whose loss runs in
    `chunks` > 1 chunks: the same step with the loss in one chunk); memory and compile time stay the step's
    own. Should XLA refuse a cost compile with the loss in one chunk for want of HBM, `chunked_cost_specs()`
    gives the chunked ones to use instead (None: the step's own counts). A step with a loop of micro-batches
    (spec.repeats > 1) has its costs scaled to every pass (repeated_costs). A step XLA:TPU refuses for want
    of HBM gives a plan that does not fit (with XLA's figures); any other compile error propagates."""
    t0 = time.perf_counter()
    lowered = spec.fn.lower(*spec.args, **spec.kwargs)
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 -- XLA raises JaxRuntimeError; only its HBM refusal is a result
        refusal = hbm_refusal(str(e))
        if refusal is None:
            raise
        return _refused_plan(spec, refusal, mesh, config, time.perf_counter() - t0)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, accessed, coll = _costs(compiled)
    loss_costs = "whole" if chunks > 1 else ""
    if cost_specs:
        try:
            flops, accessed, coll = _spec_costs(cost_specs, num_layers)
        except Exception as e:  # noqa: BLE001 -- only the one-chunk cost compile's HBM refusal has a fallback
            if chunks == 1 or chunked_cost_specs is None or hbm_refusal(str(e)) is None:
                raise
            loss_costs, cost_specs = "one chunk", chunked_cost_specs()
            if cost_specs:
                flops, accessed, coll = _spec_costs(cost_specs, num_layers)
    if spec.repeats > 1 and spec.once is not None:
        once = _costs(spec.once.fn.lower(*spec.once.args, **spec.once.kwargs).compile())
        flops, accessed, coll = repeated_costs((flops, accessed, coll), once, spec.repeats)
    chips = mesh.devices.size
    params = per_device_bytes(spec.params)
    opt = per_device_bytes(spec.optimizer) if spec.optimizer is not None else 0
    argument = int(mem.argument_size_in_bytes)
    output = int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes)
    total = argument + output + int(mem.temp_size_in_bytes) + int(mem.generated_code_size_in_bytes)
    roof = _roofline(chip, flops, accessed, sum(coll.values()))
    plan = dict(step=spec.name, shape=spec.shape, compile_s=compile_s, params_bytes=params, optimizer_bytes=opt,
                other_argument_bytes=max(argument - params - opt, 0), temp_bytes=int(mem.temp_size_in_bytes),
                output_bytes=output, code_bytes=int(mem.generated_code_size_in_bytes), total_bytes=total,
                hbm_bytes=chip.hbm_bytes, fits=total <= chip.hbm_bytes, flops=flops, bytes_accessed=accessed,
                collective_bytes=coll, **roof, model_flops=spec.model_flops,
                mfu=estimated_mfu(spec.model_flops, chips, chip, roof["step_s"]),
                used_mfu=estimated_mfu(spec.used_flops if spec.used_flops is not None else spec.model_flops, chips,
                                       chip, roof["step_s"]),
                xla_optimal_s=None if cost_specs or spec.repeats > 1 else cost.get("optimal_seconds"),
                costs="extrapolated" if cost_specs and len(cost_specs) == 2 else
                ("one loop body" if config.model.get("scan_layers", False) and num_layers > 1 else "xla"),
                replicated=replicated_large_arrays(compiled, (spec.args, spec.kwargs)), micro_batches=spec.repeats,
                loss_chunks=chunks, loss_costs=loss_costs)
    plan["advice"] = _advice(spec, plan, config, mesh)
    return StepPlan(**plan)


class PlanError(ValueError):
    """A step could not be built or compiled for a reason other than HBM (a config the step cannot take, an
    unexpected error). `plan` holds what did compile, with the failures in its `errors`."""

    def __init__(self, message: str, plan: "Plan"):
        super().__init__(message)
        self.plan = plan


@dataclasses.dataclass
class Plan:
    topology: str
    chip: TpuChip
    chips: int
    mesh: dict[str, int]
    model: str
    num_params: int
    num_layers: int
    settings: dict[str, Any]
    steps: list[StepPlan]
    errors: dict[str, str]

    @property
    def fits(self) -> bool:
        return not self.errors and all(s.fits for s in self.steps)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for s, step in zip(d["steps"], self.steps):
            s["over_bytes"] = step.over_bytes
        d["fits"] = self.fits
        return d


def _settings(config) -> dict[str, Any]:
    """The config fields that decide memory and cost, as the plan compiled them."""
    t = config.train
    out = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
               lora_rank=int(t.lora.rank), batch=int(t.batch_size), max_len=int(t.max_len),
               grad_accum=int(t.grad_accum), loss_positions=int(t.loss_positions),
               attention_window=int(t.attention_window), sample_batch=int(config.sample.batch_size),
               sample_k=int(config.sample.k), max_new_tokens=int(config.sample.max_new_tokens),
               eval_batch=int(config.eval.batch_size))
    # Fields other work adds (layer scan, remat policy, loss chunks) are reported when the config has them.
    for section, field in (("model", "scan_layers"), ("train", "remat"),
                           ("train", "loss_chunk"), ("model", "attention")):
        if field in config[section]:
            out[f"{section}.{field}"] = config[section][field]
    return out


def _with_overrides(config, fields: dict):
    """A copy of the config with dotted fields set (the config itself stays as it is)."""
    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        for key, value in fields.items():
            node = copy
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
    return copy


def plan(config, topology: str, steps=DEFAULT_STEPS, prompt_len: int = 256, num_layers: int | None = None,
         architecture=None, progress: Callable[[str], None] | None = None, layer_costs: bool = True,
         raise_errors: bool = True) -> Plan:
    """Compile `steps` of `config` for the TPU slice `topology` and read what each needs per chip.

    Args:
      config: an experiment config (model preset, mesh, train/sample/eval sizes, LoRA or full).
      topology: a named slice, "v5e:4x4", "v5p:4x4x2", "v6e:2x4", ...
      steps: among STEPS.
      prompt_len: prompt tokens for prefill/decode/generate and score rows (padded to the length buckets
        the sampler and scorer use).
      num_layers: compile this many layers instead of the architecture's (a quick look at a deep model).
      architecture: a ModelConfig to use instead of the config's model.
      progress: called with a line before each compile.
      layer_costs: for a scanned model, also compile each step unscanned at 1 and 2 layers to extrapolate
        its FLOPs, bytes and collectives (False: memory, sharding and compile time only; the costs are then
        XLA's own, one loop body's, and the step's `costs` says so).
      raise_errors: raise PlanError when a step could not be built or compiled (after trying every step);
        False: return the Plan with those steps in `errors`.

    Returns:
      a Plan. A step that XLA:TPU refuses to compile for want of HBM is a step that does not fit (in
      `steps`, with XLA's figures and the advice), not an error.

    Raises:
      MissingTpuExtra: libtpu is not installed.
      PlanError (a ValueError): a step could not be built or compiled for another reason (the message names
        each such step and its reason; the exception's `plan` holds the steps that compiled).
      ValueError: an unknown topology or step, or a mesh that does not cover the slice or that jax cannot
        lay over its devices.
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; choose among {', '.join(STEPS)}")
    chip, _ = parse_topology(topology)
    arch = architecture if architecture is not None else model_architecture(config, num_layers)
    if architecture is not None and num_layers:
        arch = with_layers(arch, num_layers)
    devices = topology_devices(topology)
    try:
        mesh = plan_mesh(config, devices)
    except Exception as e:  # noqa: BLE001 -- jax.make_mesh asserts; any failure here is the layout's
        raise ValueError(f"topology {topology!r}: cannot lay the config's mesh.shape={tuple(config.mesh.shape)} "
                         f"over its {len(devices)} {devices[0].device_kind} devices: {_first_line(e)}") from None
    from metacog_jax import sharding as sharding_lib
    from metacog_jax.models.build import rules_from_config

    sharding_lib.check_batch_divisible(int(config.train.batch_size), mesh)
    results, errors = [], {}
    for name in steps:
        if progress is not None:
            progress(f"compiling {name} for {topology} ...")
        try:
            with sharding_lib.sharding_context(mesh, rules_from_config(config)):
                build = _BUILDERS[name]
                spec = build(config, arch, mesh, prompt_len)
                scanned = layer_costs and config.model.get("scan_layers", False) and arch.num_layers > 2

                def cost_specs_for(cfg, build=build, scanned=scanned):
                    if scanned:  # XLA counts the layers' loop once: extrapolate from 1 and 2 unscanned layers
                        unscanned = _with_overrides(cfg, {"model.scan_layers": False})
                        return [build(unscanned, with_layers(arch, n), mesh, prompt_len) for n in (1, 2)]
                    return None if cfg is config else [build(cfg, arch, mesh, prompt_len)]

                positions, chunks = loss_chunks(config) if name == "train" else (0, 1)
                # XLA counts the loss chunks' loop once too: costs from the loss in one chunk (the same work).
                one_chunk = config if chunks == 1 else _with_overrides(config, {"train.loss_chunk": positions})
                results.append(compile_step(spec, chip, mesh, config, cost_specs_for(one_chunk), arch.num_layers,
                                            chunked_cost_specs=lambda f=cost_specs_for: f(config), chunks=chunks))
        except Exception as e:  # noqa: BLE001 -- one step's failure is reported; the others still compile
            errors[name] = _first_line(e)
    result = Plan(topology=topology, chip=chip, chips=len(devices), mesh=dict(mesh.shape),
                  model=f"{config.model.preset} ({config.model.name})", num_params=arch.num_params(),
                  num_layers=arch.num_layers, settings=_settings(config), steps=results, errors=errors)
    if errors and raise_errors:
        compiled = ", ".join(f"{s.step} ({'fits' if s.fits else 'does not fit'})" for s in results)
        raise PlanError(f"could not compile for {topology}: "
                        + "; ".join(f"{name}: {err}" for name, err in errors.items())
                        + (f" (compiled: {compiled}; --steps={','.join(s.step for s in results)} shows them)"
                           if results else ""), result)
    return result


def _first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


# -- the report -----------------------------------------------------------------------------------------
def _gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def _seconds(x: float) -> str:
    if x < 1e-3:  # a tiny step's terms (was "0.0 ms")
        return f"{x * 1e6:.1f} us"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _known(s: StepPlan, text: Callable[[StepPlan], str]) -> str:
    """A cost cell: `text(s)`, or "-" for a step XLA refused to compile (no costs)."""
    return "-" if s.refused else text(s)


def format_plan(p: Plan) -> str:
    """The per-chip table, one column per step, and the advice for the steps that do not fit."""
    lines = [f"{p.model}: {p.num_params / 1e9:.2f}B parameters, {p.num_layers} layers, on {p.topology} "
             f"({p.chips} chips, TPU {p.chip.name}: {p.chip.hbm_bytes / GiB:.2f} GiB HBM, "
             f"{p.chip.peak_flops / 1e12:.0f} TFLOP/s bf16) with mesh data={p.mesh['data']}, fsdp={p.mesh['fsdp']}, "
             f"tensor={p.mesh['tensor']}",
             "settings: " + ", ".join(f"{k}={v}" for k, v in p.settings.items()), ""]
    if p.steps:
        rows = [("per chip", [s.step for s in p.steps]),
                ("shape (global)", [s.shape for s in p.steps]),
                ("parameters GiB", [_gib(s.params_bytes) for s in p.steps]),
                ("optimizer state GiB", [_gib(s.optimizer_bytes) for s in p.steps]),
                ("other arguments GiB", [_gib(s.other_argument_bytes) for s in p.steps]),
                ("temporaries GiB", [_gib(s.temp_bytes) for s in p.steps]),
                ("outputs GiB", [_gib(s.output_bytes) for s in p.steps]),
                ("total GiB", [_gib(s.total_bytes) + (" (XLA)" if s.refused else "") for s in p.steps]),
                ("of HBM", [f"{s.total_bytes / s.hbm_bytes:.0%}" for s in p.steps]),
                ("fits", ["yes" if s.fits else f"NO (+{_gib(s.over_bytes)})" for s in p.steps]),
                ("TFLOPs / step", [_known(s, lambda s: f"{s.flops / 1e12:.3f}") for s in p.steps]),
                ("HBM GB accessed", [_known(s, lambda s: f"{s.bytes_accessed / 1e9:.2f}") for s in p.steps]),
                ("collective GB", [_known(s, lambda s: f"{sum(s.collective_bytes.values()) / 1e9:.3f}")
                                   for s in p.steps]),
                ("est. compute", [_known(s, lambda s: _seconds(s.compute_s)) for s in p.steps]),
                ("est. HBM", [_known(s, lambda s: _seconds(s.hbm_s)) for s in p.steps]),
                ("est. ICI", [_known(s, lambda s: _seconds(s.ici_s)) for s in p.steps]),
                ("est. step time", [_known(s, lambda s: f"{_seconds(s.step_s)} ({s.bound})") for s in p.steps]),
                ("est. MFU", [_known(s, lambda s: "(one loop body)" if s.costs == "one loop body" else
                                         f"{s.mfu:.1%}" + (" (high)" if s.loss_costs == "one chunk" else ""))
                              for s in p.steps]),
                ("est. MFU, FLOPs run", [_known(s, lambda s: "(one loop body)" if s.costs == "one loop body" else
                                                    f"{s.used_mfu:.1%}" + (" (high)" if s.loss_costs == "one chunk"
                                                                           else "")) for s in p.steps]),
                ("compile time", [f"{s.compile_s:.1f} s" + (" (refused)" if s.refused else "") for s in p.steps])]
        width = max(len(label) for label, _ in rows)
        cols = [max(len(str(r[1][i])) for r in rows) for i in range(len(p.steps))]
        for label, values in rows:
            lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, cols)))
    for s in p.steps:
        for line in s.advice:
            lines.append(f"{s.step}: {line}")
        if s.replicated:
            lines.append(f"{s.step}: large arrays replicated on every chip: {', '.join(s.replicated[:5])}")
    for name, err in p.errors.items():
        lines.append(f"{name}: could not compile: {err}")
    lines.append("")
    lines.append("Estimates, not measurements: step time = max(FLOPs / peak, HBM bytes / HBM bandwidth, collective "
                 "bytes / ICI bandwidth) per chip, from XLA's counts and published peak figures; MFU = model FLOPs "
                 "(6N, or 4N + 6N_LoRA, per trained token; forward: 2N_layers per token + 2VD per row of logits) / "
                 "(chips x peak x step time). MFU, FLOPs run: the train step's model FLOPs as it computes them, "
                 "6N_layers per token + 6VD per loss position (LoRA: 4N_layers + 4VD + 6N_LoRA per token), no "
                 "embedding FLOPs (forward steps: as MFU).")
    for s in (s for s in p.steps if not s.refused):
        if s.micro_batches > 1:
            lines.append(f"Gradient accumulation ({s.step}: {s.micro_batches} micro-batches in a loop XLA counts "
                         f"once): its FLOPs, HBM bytes and collectives are scaled, {s.micro_batches} x (the step "
                         f"less its optimizer update) + the update (compiled alone).")
        if s.loss_costs == "whole":
            lines.append(f"Loss in chunks ({s.step}: {s.loss_chunks} chunks of train.loss_chunk positions, a loop XLA "
                         f"counts once): its FLOPs, HBM bytes and collectives are those of the same step compiled "
                         f"with the loss in one chunk; memory and compile time are the chunked step's own.")
        elif s.loss_costs == "one chunk":
            lines.append(f"Loss in chunks ({s.step}: {s.loss_chunks} chunks, a loop XLA counts once): the step with "
                         f"the loss in one chunk needs more HBM than a chip has, so its FLOPs, HBM bytes and "
                         f"collectives count one chunk's LM head and loss of {s.loss_chunks}: the step time is "
                         f"low and the MFU high by that much.")
    if any(s.refused for s in p.steps):
        lines.append("A step XLA:TPU refused to compile for want of HBM shows XLA's own figures (what it needs, with "
                     "the arguments' shards added where XLA names only the temporaries, against what it can use): no "
                     "memory breakdown beyond the arguments' shards, no costs.")
    if p.settings.get("model.scan_layers") and p.num_layers > 2:
        lines.append("Scanned layers: XLA counts a loop body once, so FLOPs, HBM bytes and collectives are "
                     "extrapolated from the same steps compiled unscanned at 1 and 2 layers (c1 + (L - 1)(c2 - c1)); "
                     "memory and compile time are the scanned steps' own.")
    return "\n".join(lines)
