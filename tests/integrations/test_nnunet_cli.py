"""nnU-Net's commands and networks without the extra, and `memprobe archs` listing them (#12)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import invoke

INSTALL = "pip install 'memprobe[nnunet]'"


def _hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``import package`` (and its submodules) fail as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def test_without_nnunetv2_the_install_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "nnunetv2")
    result = invoke(capsys, "nnunet", "plan", "-d", "4", "--gpu-mem", "24GiB")
    assert result.code == 2, result.err
    assert INSTALL in result.err.splitlines()[-1]


def test_without_the_networks_package_a_probe_names_the_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "dynamic_network_architectures")
    arguments = ["probe", "--arch", "nnunet[122.222.222]", "--patch", "8", "32", "32", "--device", "trace"]
    result = invoke(capsys, *arguments)
    assert result.code == 2, result.err
    last = result.err.splitlines()[-1]
    assert INSTALL in last and "dynamic-network-architectures" in last


def test_archs_lists_nnunets_networks_and_their_rule(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "archs", "--json")
    assert result.code == 0, result.err
    items = {item["name"]: item for item in json.loads(result.out)}
    for name in ("nnunet", "nnunet-resenc-m", "nnunet-resenc-l", "nnunet-resenc-xl"):
        assert "bottleneck edge of 4" in items[name]["topology"]
        assert items[name]["installed"] is (items[name]["install"] is None)
    table = invoke(capsys, "archs")
    assert "nnunet-resenc-xl" in table.out and "one calibration per topology" in table.out


def test_archs_names_the_extra_when_the_networks_are_absent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "dynamic_network_architectures")
    data = json.loads(invoke(capsys, "archs", "--json").out)
    assert {item["install"] for item in data if item["name"].startswith("nnunet")} == {INSTALL}
    table = invoke(capsys, "archs").out
    assert f"dynamic-network-architectures, not installed: {INSTALL}" in table


def test_the_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "nnunet", "plan", "--help")
    assert result.code == 0 and "nnUNetv2_train" in result.out
