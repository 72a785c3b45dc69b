"""Merge a run's LoRA adapters into the base weights and write a Hugging Face safetensors directory."""

from __future__ import annotations

from pathlib import Path

from metacog_jax.models.weights import export_safetensors


def export_run(config, run_workdir: str | Path, out_dir: str | Path) -> Path:
    """The run's newest checkpoint (or the base model for task 'none'), LoRA merged, as a directory that
    transformers' AutoModelForCausalLM.from_pretrained loads (float32 weights + config + tokenizer)."""
    from metacog_jax.train.trainer import model_for_eval

    loaded, _ = model_for_eval(config, Path(run_workdir))  # adapters already merged
    return export_safetensors(loaded.model, out_dir, loaded.config, tokenizer=loaded.tokenizer)
