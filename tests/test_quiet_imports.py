"""spconv, cumm and torch print nothing a user can act on when the network is imported and used (ulm.nn
filters those messages once), while other warnings still show."""

import subprocess
import sys

import pytest

SPARSE_TENSOR = (
    "import torch, spconv.pytorch as spconv; "
    "spconv.SparseConvTensor(torch.ones(1, 1), torch.zeros(1, 3, dtype=torch.int32), [4, 4], 1)"
)


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags", [(), ("-W", "error")], ids=["default", "W-error"])
def test_importing_and_using_the_network_prints_nothing(flags):
    """Importing the network (spconv's FutureWarnings) and making a sparse tensor (torch.fx's is_fx_tracing
    note); under -W error the filtered warnings must not become errors either."""
    result = run_python(f"import ulm.nn.network, ulm.infer; {SPARSE_TENSOR}", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""


def test_other_warnings_still_show():
    code = "import warnings, ulm.nn.network; warnings.warn('ours', FutureWarning); warnings.warn('theirs', DeprecationWarning)"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "FutureWarning: ours" in result.stderr and "DeprecationWarning: theirs" in result.stderr
