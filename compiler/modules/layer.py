"""One layer: a block's ops run in dependency order, its memories learning and answering reads.

Execution follows the per-step data flow, with these rules:
- a memory learns from a span and answers its reads together, once its keys, values, gates
  and queries exist (a joint step);
- a read whose answer feeds the memory's own writes (Titans MAC retrieval, Hope's
  self-generated values) is answered from the state at the start of the segment (a feedback
  read), and the layer then runs in sequential segments (`LayerPlan.segment`);
- ops under a `with_prefix` run on the prefixed region's time axis (prefix.py);
- memories `group_memories` grouped run as one call, and their grouped feedback reads as one
  read (memory_group.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nestdsl.compiler.modules.memory_deep import DeepMemory
from nestdsl.compiler.modules.memory_factory import build_memory
from nestdsl.compiler.modules.memory_group import MemoryGroup
from nestdsl.compiler.modules.ops import (
    Aggregate,
    LayerNorm,
    Linear,
    RMSNorm,
    Rope,
    ShortConv,
    Stream,
    unary,
)
from nestdsl.compiler.modules.prefix import Region
from nestdsl.spec import ops as spec_ops
from nestdsl.spec.dims import evaluate
from nestdsl.spec.ops import UNARY, inputs_of


class Layer(nn.Module):
    def __init__(self, plan, layer):
        super().__init__()
        self.name = layer.name
        self.block_name = layer.block_name
        self.block = layer.block
        self.input, self.out = layer.block.input, layer.block.out
        self.segment = layer.segment
        self.ops = nn.ModuleDict()
        self.in_ndim: dict[str, int] = {}
        self.persistent = nn.ParameterDict()
        for name, op in layer.block.nodes.items():
            module = self._module(plan, layer, name, op)
            if module is not None:
                self.ops[name] = module
        owner = plan.spec.levels.get(layer.block.level or "")
        if owner is not None and owner.every == "never":  # a frozen level trains nothing
            for parameter in [*self.ops.parameters(), *self.persistent.parameters()]:
                parameter.requires_grad_(False)
        self.memories = nn.ModuleDict({d: build_memory(m) for d, m in layer.memories.items()})
        self.axis = layer.axis
        self.regions = {n: self._region(plan, n, op) for n, op in layer.block.nodes.items()
                        if isinstance(op, spec_ops.WithPrefix)}  # fmt: skip
        for decl, memory in self.memories.items():
            memory.in_region = self.axis[f"memory:{decl}"] is not None
        self.steps = layer.steps
        # A segmented layer: the steps inside its segments, and those run once after them
        # over the whole span (schedule_levels decides which) with the values they need.
        self.in_segments = [s for s in self.steps if s not in layer.after_segments]
        self.after_segments = [s for s in self.steps if s in layer.after_segments]
        self.kept = layer.kept_from_segments or (self.out,)
        self.joint = {decl: list(m.reads) for decl, m in layer.memories.items()}
        # Memories `group_memories` runs as one call (a plain dict: the members hold the
        # parameters), and each grouped feedback read's group and read nodes.
        self.groups = {name: MemoryGroup(g, [self.memories[d] for d in g.members])
                       for name, g in layer.groups.items()}  # fmt: skip
        self.grouped_reads = {"+".join(reads): (name, reads) for name, g in layer.groups.items()
                              for reads in g.feedback}  # fmt: skip

    # ---------------------------------------------------------------- construction

    def _module(self, plan, layer, name, op):
        key = f"{layer.name}.{name}"
        if isinstance(op, spec_ops.Linear):
            in_shape = layer.shapes[op.in_]
            self.in_ndim[name] = len(in_shape)
            rank = None if op.rank is None else evaluate(op.rank, plan.dims)
            return Linear(in_shape, layer.shapes[name], op.bias, op.then, key, rank)
        if isinstance(op, spec_ops.Norm):
            dim = layer.shapes[name][-1]
            return RMSNorm(dim) if op.op == "rmsnorm" else LayerNorm(dim)
        if isinstance(op, spec_ops.ShortConv):
            return ShortConv(layer.shapes[name], op.kernel, key)
        if isinstance(op, spec_ops.Rope):
            return Rope(layer.shapes[name][-1], op.base)
        if isinstance(op, spec_ops.Aggregate):
            return Aggregate(len(op.in_), op.mode)
        if isinstance(op, spec_ops.Persistent):
            n, d = evaluate(op.tokens, plan.dims), evaluate(op.dim, plan.dims)
            self.persistent[name] = nn.Parameter(torch.randn(n, d) / math.sqrt(d))
        return None

    def _region(self, plan, name, op) -> Region:
        persistent = [p for p in op.prefix if p in self.persistent]
        n_persistent = sum(self.persistent[p].shape[0] for p in persistent)
        segment = plan.spec.levels[op.segment].every if op.segment else None
        return Region(n_persistent, len(op.prefix) - len(persistent), segment)

    def recompute_chunks(self, which: str) -> None:
        """Every deep memory of the layer, grouped calls included (model.py)."""
        calls = [m for m in self.memories.values() if isinstance(m, DeepMemory)]
        for memory in calls + [g.call for g in self.groups.values()]:
            memory.recompute_chunks(which)

    def extra_repr(self) -> str:
        seg = f", sequential every {self.segment} tokens" if self.segment else ""
        return f"{self.name}: block `{self.block_name}`{seg}"

    # ---------------------------------------------------------------- running

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        y = self._pieces(x, stream)
        for group in self.groups.values():  # grouped memories' state back under their keys
            group.flush(stream)
        return y

    def _pieces(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        if not self.segment:
            return self._piece(x, stream, stream.pos, self.steps)[self.out]
        base, T, sizes, start = stream.pos, x.shape[1], [], 0
        while start < T:
            end = min(T, start + self.segment - (base + start) % self.segment)
            sizes.append(end - start)
            start = end
        # One split, not a slice per segment: each slice's backward would build a zero tensor
        # of the whole span (O(T^2 / segment) in backward); split's backward is one cat.
        outs, start = {n: [] for n in self.kept}, 0
        for piece in x.split(sizes, dim=1):  # [B, segment, D] each
            env = self._piece(piece, stream, base + start, self.in_segments)
            for n in self.kept:
                outs[n].append(env[n])
            start += piece.shape[1]
        stream.pos = base
        env = {n: torch.cat(pieces, dim=1) for n, pieces in outs.items()}
        return self._piece(x, stream, base, self.after_segments, env)[self.out]

    def _piece(self, x, stream: Stream, base_pos: int, steps, env=None) -> dict:
        """Run `steps` on the tokens `x` from `base_pos`, with `env` the values computed before
        them (None: only the layer input): every value by name."""
        env = {self.input: x, **dict(self.persistent.items()), **(env or {})}
        stream.base_pos = base_pos
        T = x.shape[1]
        for kind, name in steps:
            axis = self.axis.get(name if kind != "memory" else f"memory:{name}")
            stream.pos = self.regions[axis].position(base_pos) if axis else base_pos
            if kind == "op":
                env[name] = self._run_op(name, self.block.nodes[name], env, stream, T)
            elif kind == "feedback":
                op = self.block.nodes[name]
                env[name] = self.memories[op.memory].read_state(env[op.query], op.order, stream)
            elif kind == "feedback_group":
                group, reads = self.grouped_reads[name]
                queries = [env[self.block.nodes[r].query] for r in reads]
                order = self.block.nodes[reads[0]].order
                env.update(zip(reads, self.groups[group].read_state(queries, order, stream)))
            elif kind == "group":
                group = self.groups[name]
                reads = [[(env[self.block.nodes[r].query], self.block.nodes[r].order)
                          for r in names] for names in group.plan.reads]  # fmt: skip
                length = reads[0][0][0].shape[1] if reads else None
                outs = group.run(env, reads, stream, length)
                for names, answers in zip(group.plan.reads, outs):
                    env.update(zip(names, answers))
            else:
                names = self.joint[name]
                reads = [(env[self.block.nodes[n].query], self.block.nodes[n].order)
                         for n in names]  # fmt: skip
                length = env[self.block.nodes[names[0]].query].shape[1] if names else None
                outs = self.memories[name].run(env, reads, stream, length)
                env.update(zip(names, outs))
        stream.pos = base_pos
        return env

    def _run_op(self, name: str, op, env: dict, stream: Stream, T: int) -> torch.Tensor:
        ins = [env[i] for i in inputs_of(op)]
        module = self.ops[name] if name in self.ops else None
        if isinstance(op, spec_ops.Linear):
            return module(ins[0], self.in_ndim[name], stream)
        if isinstance(module, (ShortConv, Rope)):
            return module(ins[0], stream)
        if isinstance(op, spec_ops.Aggregate):
            return module(ins)
        if module is not None:
            return module(ins[0])
        if op.op in UNARY:
            return unary(op.op, ins[0])
        if isinstance(op, spec_ops.Mul):
            a, b = ins
            while a.dim() < b.dim():
                a = a.unsqueeze(-1)
            while b.dim() < a.dim():
                b = b.unsqueeze(-1)
            return a * b
        if isinstance(op, spec_ops.Add):
            return sum(ins[1:], ins[0])
        if isinstance(op, spec_ops.Scale):
            return ins[0] * op.by
        if isinstance(op, spec_ops.Persistent):
            return self.persistent[name]
        if isinstance(op, spec_ops.WithPrefix):
            region = self.regions[name]
            persistent = [env[p] for p in op.prefix if p in self.persistent]
            per_token = [env[p] for p in op.prefix if p not in self.persistent]
            return region.build(ins[0], persistent, per_token, stream.base_pos)
        if isinstance(op, spec_ops.DropPrefix):
            return self.regions[op.of].drop(ins[0], stream.base_pos, T)
        raise NotImplementedError(f"op `{op.op}` has no lowering (this is a bug in nestdsl)")
