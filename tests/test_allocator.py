import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from cxrlab.allocator import keep_freed_memory
on = keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(10):  # a 256 MB buffer, used and freed, as a large feature map is in every forward pass
    before = faults()
    torch.empty(64 * 2**20).fill_(1)
    counts.append(faults() - before)
print(on, sum(counts[5:]))
"""


def _probe(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_large_buffers_are_reused_without_page_faults():
    on, faults = _probe()
    assert on
    assert faults < 1000  # 5 x 256 MB is 327,680 pages: fresh mappings would fault on every one


def test_system_malloc_can_be_kept():
    on, _ = _probe(CXRLAB_MALLOC="system")
    assert not on
