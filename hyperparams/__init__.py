"""rl-zoo3 hyper-parameter files for the ERA algorithms (``sac_era.yml``, ``ppo_era.yml``, ...) and for their
baselines with the ERA authors' settings and critic (``sac_authors.yml``, ``tqc_authors.yml``: stock SAC/TQC).

The files ship as package data so an installed ``era-rl`` finds them too::

    import hyperparams
    hyperparams.path("sac_era")  # -> .../hyperparams/sac_era.yml
    hyperparams.path("sac_authors")  # -> .../hyperparams/sac_authors.yml
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["available", "path"]

_FOLDER = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped hyper-parameter files (without ``.yml``), sorted."""
    return sorted(file.stem for file in _FOLDER.glob("*.yml"))


def path(name: str) -> Path:
    """Path of the shipped rl-zoo3 file for one algorithm.

    :param name: the zoo algorithm name, e.g. ``"sac_era"`` (a trailing ``.yml`` is accepted).
    :return: absolute path of ``<name>.yml``.
    :raises FileNotFoundError: when no such file ships, naming the ones that do.
    """
    stem = name.removesuffix(".yml")
    file = _FOLDER / f"{stem}.yml"
    if not file.is_file():
        raise FileNotFoundError(f"no hyper-parameter file {stem!r} in {_FOLDER}; available: {available()}")
    return file
