"""The README's facts about the shipped model agree with the files they describe."""

import math
import re
from pathlib import Path

from safetensors import safe_open

from lora_edu.pretrain import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README.split("## The tiny Llama-3 model", 1)[1].split("\n## ", 1)[0]


def test_readme_states_the_tiny_models_parameter_count():
    with safe_open(DATA_DIR / "model.safetensors", framework="pt") as weights:
        names = weights.keys()  # a safe_open handle is not a dict
        count = sum(math.prod(weights.get_slice(k).get_shape()) for k in names)
    stated = re.search(r"([\d,]+) parameters", SECTION)
    assert stated, "the README's section on the tiny model states no parameter count"
    assert int(stated.group(1).replace(",", "")) == count, f"the model has {count:,}"


def test_readme_states_the_tiny_models_file_size():
    size = (DATA_DIR / "model.safetensors").stat().st_size
    stated = re.search(r"([\d.]+) MB of safetensors", SECTION)
    assert stated, "the README's section on the tiny model states no file size"
    assert stated.group(1) == f"{size / 1e6:.1f}", f"the file has {size:,} bytes"
