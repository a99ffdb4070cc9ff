"""poold: a warm-pool scheduler for WebAssembly (WASI) jobs."""

__version__ = "0.1.0"
