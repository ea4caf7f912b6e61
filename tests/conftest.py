"""Suite-wide settings: offline hubs, a single CPU thread per process (CI has 2 cores), hypothesis profiles."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch
from hypothesis import Phase, settings

torch.set_num_threads(1)

# Mutation testing (scripts/mutation.py) runs the suite once per mutant: no shrinking of failures (a
# failure is all it needs), fixed examples so that a mutant's verdict does not depend on luck.
settings.register_profile(
    "mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], derandomize=True, database=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
