"""metacog_jax: teach language models to say how sure they are."""
__version__ = "0.1.0"
