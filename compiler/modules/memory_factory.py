"""The memory module for a memory instance, by the kernel `pick_kernels` chose."""

from __future__ import annotations

from nestdsl.compiler.modules.memory_deep import DeepMemory, StaticMemory
from nestdsl.compiler.modules.memory_kernels import CacheMemory, MatrixMemory
from nestdsl.compiler.modules.memory_task import TaskMemory
from nestdsl.compiler.plan import MemoryPlan
from nestdsl.errors import CompileError

_MODULES = {
    "softmax_attention": CacheMemory,
    "linear_attention": MatrixMemory,
    "delta_rule": MatrixMemory,
    "gated_delta_rule": MatrixMemory,
    "titans_linear": DeepMemory,
    "deep_memory": DeepMemory,
    "task_memory": TaskMemory,
    "static": StaticMemory,
}


def build_memory(plan: MemoryPlan):
    module = _MODULES.get(plan.kernel)
    if module is None:
        raise CompileError(f"memory `{plan.decl}`: no lowering for kernel `{plan.kernel}`")
    return module(plan)
