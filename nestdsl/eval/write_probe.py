"""The write probe: can a spec's in-context memory store a pair before any training?

Learning recall needs two things from a memory at initialization: one write must move its read
toward the value written, and what it stores must depend differentiably on that value, or the
outer loop gets no gradient to shape the values with. A memory that fails either sits at chance
on MQAR for as long as one cares to train it (docs/evaluation.md: Hope's main memory before its
inner norm moved a read 0.5% of the way to its value; Yaad's l1 branch, taken whenever its
Huber threshold is below the error, stores only the sign of the error). The probe measures both
in a second, without training:

* every deep memory that a block reads other than at its chunk start (the memory that answers
  queries: `M` in Titans and Miras, `M_memory` in Hope), at its initial weights, with the
  compiled kernel and options;
* `pairs` (8) unit keys (in the memory's key space, after any feature map) and values with
  unit-variance entries, written in the first chunk with the gates at their initial values
  (a gate's linear layer outputs 0 at the probe, so a gate is its cap x sigmoid(0) or
  softplus(0)); the same keys are read in the next chunk, where nothing is written;
* **gain**: how far each read moved from the unwritten read toward its value, as a fraction of
  the way (1 = the value is stored exactly); **nearest**: the fraction of reads whose move is
  nearest (cosine) to their own value among the pairs; **differentiable**: the fraction of
  pairs whose read has a nonzero gradient with respect to its value.
"""

from __future__ import annotations

import math

import torch

ZERO_INPUT = {"sigmoid": 0.5, "softplus": math.log(2.0)}  # an activation at a zero input


def initial_gate(nodes: dict, source) -> float:
    """A gate's value when its linear layer outputs zero: its caps (`scale` nodes) times
    sigmoid(0) or softplus(0); a number stays itself."""
    if not isinstance(source, str):
        return float(source)
    node = nodes[source]
    if node.op == "scale":
        return node.by * initial_gate(nodes, node.in_)
    if node.op == "linear" and node.then and node.then[-1] in ZERO_INPUT:
        return ZERO_INPUT[node.then[-1]]
    raise ValueError(f"write probe: gate {source!r} is neither a capped sigmoid nor softplus")


def query_memories(loaded) -> dict[str, dict]:
    """{memory: the nodes of the block that reads it} for the memories a block reads other than
    at their chunk start: those that answer queries (their gates are that block's nodes)."""
    return {n.memory: b.nodes for b in loaded.spec.blocks for n in b.nodes.values()
            if n.op == "read" and n.order != "chunk_start"}  # fmt: skip


def probe_memory(memory, nodes: dict, pairs: int = 8, batch: int = 64, seed: int = 0) -> dict:
    """Gain, nearest and differentiable (module docstring) of one compiled DeepMemory."""
    from nestdsl.kernels.deep_memory import deep_memory

    decl, o = memory.plan.memory, memory.options
    C, H = o.chunk_size, memory.plan.heads
    d_in, d_out = o.structure.d_in, o.structure.d_out
    g = torch.Generator().manual_seed(seed)
    keys = torch.nn.functional.normalize(torch.randn(batch, pairs, H, d_in, generator=g), dim=-1)
    values = torch.randn(batch, pairs, H, d_out, generator=g).requires_grad_()
    k = torch.zeros(batch, 2 * C, H, d_in)
    k[:, :pairs] = keys
    k[:, C : C + pairs] = keys  # read one chunk later
    v = torch.cat([values, values.new_zeros(batch, 2 * C - pairs, H, d_out)], dim=1)

    def gate(source, default: float, writes_only: bool = True) -> torch.Tensor:
        t = torch.full((batch, 2 * C, H), default if source is None else initial_gate(nodes, source))
        if writes_only:
            t[:, pairs:] = 0.0  # nothing is written or forgotten after the pairs
        return t

    rule = decl.rule
    theta = gate(rule.lr, 1.0)
    eta = gate(getattr(rule, "momentum", None), 0.0, writes_only=False)
    forget = gate(getattr(decl.retention, "forget", None), 0.0)
    source = getattr(decl.objective, "delta", None)
    extra = {}
    if isinstance(source, str):
        extra["delta"] = gate(source, 1.0, writes_only=False)
    if decl.window is not None and isinstance(decl.window.weight, str):
        extra["gamma"] = gate(decl.window.weight, 1.0, writes_only=False)
    W = memory.initial_weights(batch, k)
    if o.anchored:  # retention toward the initial state: here the state it starts from
        extra["anchor"] = W
    with torch.no_grad():
        before, _ = deep_memory(k, k, v, theta * 0, eta, forget * 0, W, o, **extra)
    after, _ = deep_memory(k, k, v, theta, eta, forget, W, o, **extra)
    before, after = before[:, C : C + pairs], after[:, C : C + pairs]
    gap, move = values.detach() - before, after.detach() - before
    gain = (move * gap).sum(-1) / gap.pow(2).sum(-1)
    unit = torch.nn.functional.normalize
    cosines = torch.einsum("bihd,bjhd->bhij", unit(move, dim=-1), unit(gap, dim=-1))
    nearest = (cosines.argmax(-1) == torch.arange(pairs)).float().mean()
    (grad,) = torch.autograd.grad((after * values.detach()).sum(), values)
    differentiable = (grad.flatten(2).norm(dim=-1) > 1e-6).float().mean()
    return {"gain": gain.mean().item(), "nearest": nearest.item(),
            "differentiable": differentiable.item()}  # fmt: skip


def write_probe(spec: str, overrides=(), pairs: int = 8, seed: int = 0) -> dict[str, dict]:
    """{memory name: probe result} for the first layer's query memories of `spec` (a shipped
    name or a file), compiled with `overrides` and seeded initial weights."""
    import nestdsl
    from nestdsl.compiler.modules.memory_deep import DeepMemory

    torch.manual_seed(seed)
    loaded = nestdsl.load(spec, overrides=list(overrides))
    model = nestdsl.compile(loaded)
    found = {}  # memory name -> its module in the first layer that has it
    for path, module in model.named_modules():
        if isinstance(module, DeepMemory):
            found.setdefault(path.rsplit(".", 1)[-1], module)
    return {name: probe_memory(found[name], nodes, pairs, seed=seed)
            for name, nodes in sorted(query_memories(loaded).items()) if name in found}  # fmt: skip
