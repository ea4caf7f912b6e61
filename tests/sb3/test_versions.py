"""What the benchmarks record about the machine beside their timings."""

from __future__ import annotations

import builtins
import platform

import pytest

from sb3_era.versions import cpu_model


def test_cpu_model_reads_the_model_name_line(monkeypatch: pytest.MonkeyPatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\nflags\t: a b\n")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )
    assert cpu_model() == "Some CPU @ 2.0GHz"


def test_cpu_model_falls_back_to_the_platform(monkeypatch: pytest.MonkeyPatch):
    def no_cpuinfo(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    assert cpu_model() == (platform.processor() or platform.machine())
