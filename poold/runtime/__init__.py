"""WebAssembly runtimes: what a module is, how it is compiled, cached and run."""
