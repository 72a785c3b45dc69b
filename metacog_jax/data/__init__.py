"""Question records, dataset sources, procedural domains and grading.

Kept import-light on purpose: importing ``metacog_jax.data`` must not pull in
TFDS or grain. Import the submodules you need, e.g.
``from metacog_jax.data import records, grading``.
"""
