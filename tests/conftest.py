import os

# Triton kernels run on CPU tensors through the interpreter; this must be set before any Triton
# kernel module is imported (mmxai_fast imports them lazily on first use).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
