"""The `pytest` commands the README shows, run as a user runs them: each one of its code blocks, in a folder holding
what they name (`my_lora.safetensors`, `other_peft_folder/`, `path/to/diffusers-folder`, `out/my_lora.safetensors`),
with the hub id they name served by the local Hub (`tests/hub_server.py`) as a tiny SDXL-shaped pipeline. A run on a
real base (the hub id, the folder) asks for the default CLIP (ViT-L/14), which no test can hold: its CLIP checks error naming it, and every
other check passes or says why it skips."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.hub_server import LocalHub

README = Path(__file__).parents[1] / "README.md"
HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
CLIP_CHECKS = {"clip_heldout", "mode_collapse"}


def readme_commands() -> list[str]:
    """Every `pytest …` line of the README's code blocks but the project's own test run, comments dropped."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for line in (line for block in blocks for line in block.splitlines()):
        command = line.split("#")[0].split("&&")[-1].strip().removeprefix("- run:").strip()
        if command.startswith("pytest ") and command != "pytest":
            commands.append(command)
    return commands


def test_the_readme_shows_the_main_job_and_a_real_base():
    commands = readme_commands()
    assert "pytest --adapter reference" in commands
    assert any(HUB_ID in command for command in commands)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    from lora_harness.bases.tiny_base import build_tiny_sdxl_pipeline
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_adapter, write_kohya_components

    folder = tmp_path_factory.mktemp("user")
    pipeline = build_tiny_sdxl_pipeline()
    pipeline.save_pretrained(folder / "path/to/diffusers-folder", safe_serialization=True)
    loras = make_pipeline_lora(pipeline, rank=2, seed=3)  # U-Net and both text encoders, as sd-scripts trains SDXL
    write_kohya_components(loras, folder / "my_lora.safetensors", 2, 2)
    write_adapter("peft", loras["unet"], folder / "other_peft_folder", 2, 2)
    (folder / "out").mkdir()
    shutil.copy(folder / "my_lora.safetensors", folder / "out" / "my_lora.safetensors")
    return folder


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_runs_as_shown(command, user_folder, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    run_in = tmp_path / "run"
    shutil.copytree(user_folder, run_in)
    with LocalHub({HUB_ID: user_folder / "path/to/diffusers-folder"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        argv = [sys.executable, "-m", *shlex.split(command), "-p", "no:cacheprovider"]
        finished = subprocess.run(argv, cwd=run_in, capture_output=True, text=True, timeout=900)
    document = json.loads((run_in / "lora-report" / "results.json").read_text())
    assert document["run"]["status"] == "complete", finished.stdout[-2000:]
    errors = {r["check"] for r in document["results"] if r["status"] == "error"}
    failed = [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] == "failed"]
    assert failed == []
    if re.search(r"--base-model (?!tiny)", command):  # a real base's default CLIP: what this machine cannot fetch
        assert errors <= CLIP_CHECKS
        assert all("ViT-L-14:openai" in r["message"] for r in document["results"] if r["status"] == "error")
    else:
        assert errors == set() and finished.returncode == 0, finished.stdout[-2000:]
