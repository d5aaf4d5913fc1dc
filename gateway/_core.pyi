"""Stub of the Rust extension built from `rust_core/` (checked by `mypy.stubtest`)."""

__version__: str
