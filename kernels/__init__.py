"""Memory-update kernels: loop references, chunk-parallel torch forms, Triton forms."""
