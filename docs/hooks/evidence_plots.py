"""MkDocs hook: serve the evidence reports' plots, so the evidence page shows them without copies in docs/.

``benchmarks/evidence/results/<protocol>/report/<name>.png`` (written by ``python -m benchmarks.evidence.report
<protocol>``) is served as ``evidence/<protocol>/<name>.png``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

RESULTS = Path("benchmarks/evidence/results")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every committed report plot to the site's files."""
    root = Path(config.config_file_path).parent
    for plot in sorted((root / RESULTS).glob("*/report/*.png")):
        protocol = plot.parent.parent.name
        files.append(File.generated(config, f"evidence/{protocol}/{plot.name}", abs_src_path=str(plot)))
    return files
