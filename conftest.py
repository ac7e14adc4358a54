"""Repository-wide test setup: everything offline, before any library reads these variables."""

import os

for name, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    # Tiny models gain nothing from threads, and two of them fight over CI's two cores.
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(name, value)
