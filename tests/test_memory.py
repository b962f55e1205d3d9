"""The docs' memory table (docs/performance.md) is what `harness/bases/memory.py` computes from the carried configs now, so it cannot go
stale; the computation is parameters x dtype size."""

import subprocess
import sys
from pathlib import Path

PERFORMANCE = Path(__file__).parents[1] / "docs" / "performance.md"


def test_the_docs_hold_the_table_the_carried_configs_give_now():
    from lora_harness.bases.memory import LABEL, markdown_table

    page = PERFORMANCE.read_text()
    assert markdown_table() in page, (
        f"{PERFORMANCE}: the Memory table differs from what the carried configs give now; replace it with the output of "
        "`python -m lora_harness.bases.memory`"
    )
    assert LABEL in page


def test_a_row_is_the_parameter_counts_times_the_dtype_size():
    """SD1.5 by hand: 859,520,964 + 83,653,863 + 123,060,480 = 1,066,235,307 parameters; x 4 bytes = 3.97 GiB,
    x 2 = 1.99 GiB; its largest model, the U-Net, 1.60 GiB in half precision."""
    from lora_harness.bases.memory import markdown_table

    assert (
        "| SD1.x (SD1.5) | 859,520,964 | 83,653,863 | 123,060,480 | 3.97 GiB | 1.99 GiB | 1.60 GiB (U-Net) |"
        in markdown_table().splitlines()
    )


def test_the_module_prints_the_table_with_its_label():
    from lora_harness.bases.memory import LABEL, markdown_table

    printed = subprocess.run(
        [sys.executable, "-m", "lora_harness.bases.memory"], capture_output=True, text=True, check=True
    ).stdout
    assert LABEL in printed and markdown_table() in printed
