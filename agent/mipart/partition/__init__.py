"""The partition engine: plan (pure), apply/assert/export (effects through the GPU backend)."""
