"""nestdsl/allocator.py: the `nestdsl` command keeps freed blocks for the next step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A step-like pattern in a fresh process: 8 blocks of 8 MiB written and freed, four times; the
# minor page faults (fresh pages from the OS) of the last three rounds.
ROUNDS = textwrap.dedent("""
    import resource, sys, torch
    from nestdsl.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(4):
        f0 = faults()
        blocks = [torch.ones(2 << 20) for _ in range(8)]
        del blocks
        counts.append(faults() - f0)
    print(sum(counts[1:]))
""")


def _later_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    """With glibc's defaults the rounds after the first take fresh pages again (the freed
    heap top is trimmed); kept, they reuse the first round's (64 MiB = 16,384 pages)."""
    default, kept = _later_faults("default"), _later_faults("keep")
    assert kept < 16_384 / 2 < default


def test_the_command_line_keeps_freed_memory(monkeypatch):
    import nestdsl.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert cli.main(["list"]) == 0
    assert calls == [True]
