"""nestdsl: nested-learning architectures as declarative specs."""
