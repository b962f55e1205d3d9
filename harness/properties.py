"""Names of the `user_properties` that carry the harness's records on test reports (xdist ships only reports)."""

RESULT = "lora_harness.result"
ADAPTER = "lora_harness.adapter"
BASE = "lora_harness.base"
CONTROLS = "lora_harness.controls"
FORWARD_PASSES = "lora_harness.unet_forward_passes"
