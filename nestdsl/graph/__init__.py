"""The level graph: a networkx IR of levels, memories, ops and tensors with typed edges."""
