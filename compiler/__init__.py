"""Compiler: passes over the level graph and lowering to PyTorch modules."""
