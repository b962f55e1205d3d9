"""param_budget: the adapter's LoRA parameters (those its file holds), against an absolute or relative budget, broken down by block."""

from __future__ import annotations

from collections import Counter

from lora_harness.bases.families import block_of
from lora_harness.config.options import ParamBudget
from lora_harness.loading.application import Application
from lora_harness.verdicts.results import verdict

CHECK = "param_budget"


def evaluate_param_budget(adapter: str, application: Application, budget: ParamBudget, denoiser_params: int):
    limit = budget.limit(denoiser_params)
    breakdown = Counter()
    if application.file_module_params:  # converted: the file's own parameters, not the copies its loader made
        for name, params in application.file_module_params.items():
            breakdown[block_of(name, application.architecture)] += params
        count = sum(application.file_module_params.values())
    else:
        for name, params in application.layer_params.items():
            breakdown[block_of(name, application.architecture)] += params
        count = application.lora_params
    percent = 100 * count / denoiser_params if denoiser_params else 0.0
    details = {"percent_of_denoiser": percent, "budget": str(budget), "per_block": dict(sorted(breakdown.items()))}
    message = f"{count:,} LoRA parameters ({percent:.3f}% of the denoiser) exceed the budget of {limit:,} ({budget})"
    if application.lora_params > count and not application.replaced:
        details["injected_params"] = application.lora_params
        message += (
            f"; its loader injects {application.lora_params:,}, copying a fused module's down matrix into each "
            "layer the module fills"
        )
    if application.replaced is not None:  # whole modules count as what the adapter ships
        details["replaced_module_params"] = application.replaced.parameters
        message += f"; {application.replaced.parameters:,} of them in modules `modules_to_save` replaces whole"
    return verdict(adapter, CHECK, count <= limit, count, limit, message, details)
