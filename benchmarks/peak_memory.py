"""One render phase in this process; prints its peak resident memory as JSON (used by test_peak_memory).

    python benchmarks/peak_memory.py plain|harness ADAPTER

The peak is reset (Linux /proc/self/clear_refs) once the base and adapter are loaded, so it is the render
phase's own: a copy of the pipeline would show as a peak far above the plain script's.
"""

import json
import sys
import tempfile
from pathlib import Path

import render_phase


def resident_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(renderer: str, adapter: str) -> None:
    config = render_phase.harness_config(Path(tempfile.mkdtemp()), Path(adapter))
    if renderer == "harness":
        arguments = render_phase.harness_setup(config)
        render = render_phase.harness_renders
    else:
        arguments = (render_phase.plain_setup(config),)
        render = render_phase.plain_renders
    loaded = resident_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    render(*arguments)
    peak = resident_mib("VmHWM")
    print(
        json.dumps({"loaded_mib": round(loaded, 1), "peak_mib": round(peak, 1), "growth_mib": round(peak - loaded, 1)})
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
