"""Installed versions of the packages a run depends on, recorded beside its results."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each package's installed version (``"not installed"`` where it is missing).

    :param packages: distribution names as pip knows them, e.g. ``("stable-baselines3", "torch")``
    :return: ``{"python": ..., package: version, ...}``
    """
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's model name as the operating system reports it (``/proc/cpuinfo`` on Linux, with its family and
    model numbers, which tell apart CPUs reported under one generic name such as ``AMD EPYC``), else what
    :func:`platform.processor` or :func:`platform.machine` says; recorded beside timings, whose ratios differ
    from one CPU to another."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = (part.strip() for part in line.partition(":"))
                if not key:  # the first processor's block ends
                    break
                fields.setdefault(key, value)
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = ", ".join(
        f"{name} {fields[key]}"
        for name, key in (("family", "cpu family"), ("model", "model"))
        if key in fields
    )
    return f"{fields['model name']} ({numbers})" if numbers else fields["model name"]
