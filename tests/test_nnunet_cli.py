"""`memprobe nnunet plan` without the extra (#12): one line naming the install."""

from __future__ import annotations

import importlib.util

import pytest

from tests.robustness_helpers import run_cli


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is not None, reason="nnunetv2 is installed")
def test_without_nnunetv2_the_install_is_named() -> None:
    result = run_cli("nnunet", "plan", "-d", "4", "--gpu-mem", "24GiB")
    assert result.code == 2
    assert "pip install 'memprobe[nnunet]'" in result.err.splitlines()[-1]


def test_the_command_has_help() -> None:
    result = run_cli("nnunet", "plan", "--help")
    assert result.code == 0 and "nnUNetv2_train" in result.out
