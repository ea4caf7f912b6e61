"""What the benchmarks record about the machine beside their timings."""

from __future__ import annotations

import builtins
import platform

import pytest

from sb3_era.versions import cpu_model


def _cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path, text: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )


def test_cpu_model_reads_the_first_processors_name_family_and_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    first = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t: a b\n"
    _cpuinfo(monkeypatch, tmp_path, first + "\n" + first.replace("17", "1").replace("0\n", "1\n", 1))
    assert cpu_model() == "AMD EPYC (family 25, model 17)"


def test_cpu_model_without_family_numbers_is_the_model_name(monkeypatch: pytest.MonkeyPatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\n")
    assert cpu_model() == "Some CPU @ 2.0GHz"


def test_cpu_model_falls_back_to_the_platform(monkeypatch: pytest.MonkeyPatch):
    def no_cpuinfo(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    assert cpu_model() == (platform.processor() or platform.machine())
