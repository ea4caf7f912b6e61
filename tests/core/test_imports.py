"""era_core depends on torch only: importing it must not pull in an ecosystem library."""

import subprocess
import sys


def test_era_core_imports_no_adapter_library() -> None:
    code = (
        "import sys, era_core; "
        "bad = [m for m in ('stable_baselines3', 'sb3_contrib', 'timm', 'trl', 'transformers', 'gymnasium') "
        "if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_exported() -> None:
    import era_core

    for name in era_core.__all__:
        assert hasattr(era_core, name), name
