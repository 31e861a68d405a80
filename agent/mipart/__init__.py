"""mipart: declarative partitioning and vLLM serving for AMD Instinct hosts."""

__version__ = "0.1.0"
