"""metacog_jax: teach language models to say how sure they are."""
__version__ = "0.1.0"

from metacog_jax.platforms import keep_off_absent_tpu as _keep_off_absent_tpu

# With the `tpu` extra installed on a machine without TPUs, ordinary runs stay on the CPU (or GPU).
_keep_off_absent_tpu()
