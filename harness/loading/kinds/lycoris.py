"""LyCORIS files, every algo, in Kohya's names or LyCORIS's own prefix (not Flux's original names: `unapplied`),
applied by LyCORIS's own modules (`lycoris_modules`). The proof: each tensor in the module LyCORIS built for it, with
its value, and each module's scale as LyCORIS applies it against alpha / rank as the file declares them. The modules
stay off the base but while their adapter renders."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lora_harness.bases.families import Family, Signature
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application, describe_unmatched
from lora_harness.loading.flux_layouts import flux_layout
from lora_harness.loading.lycoris_modules import (
    KOHYA_NAMED,
    OWN_PREFIX,
    PREFIXED,
    LycorisFactors,
    LycorisNetwork,
    build_network,
    declared_rank,
    file_modules,
    is_lycoris_file,
    landed_tensors,
)
from lora_harness.loading.peft_injection import peft_layers_off
from lora_harness.loading.proof import most_common, same_values, tensor_facts


@dataclass
class LycorisOnBase:
    """On: peft's layers off, each LyCORIS module's layer running its forward at the scale as its multiplier (the
    pipeline's scale keyword does not reach LyCORIS); off: nothing to take out."""

    pipeline: object
    network: LycorisNetwork
    scale_in_call: bool = False

    @contextlib.contextmanager
    def active(self, scale: float):
        with peft_layers_off(self.pipeline), self.network.active(scale):
            yield

    def watch(self, name: str, layer: torch.nn.Module, mark):
        return self.network.watch(name, mark)

    def remove(self) -> None:
        """Nothing of it is on the base outside `active`."""


def _claims(adapter: AdapterFile, family: Family) -> bool:
    keys = list(adapter.tensors)
    return is_lycoris_file(keys) and flux_layout(keys) is None


def apply_lycoris(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    modules = file_modules(adapter)
    built = build_network(pipeline, modules)
    tensor_keys = [key for key in adapter.tensors if not key.endswith(".alpha")]
    if not built.network.modules:
        raise AdapterLoadError(
            f"{adapter.weights_path}: none of its {len(tensor_keys)} LyCORIS tensors lands on a module of the base; "
            + describe_unmatched(built.unmatched, [], built.refused)
        )
    applied, value_mismatches, scales, expected, ranks, alphas = 0, [], {}, {}, {}, {}
    factors, lycoris_factors, lora_params = {}, {}, 0
    for name, module in built.network.modules.items():
        roles = modules[built.file_names[name]]
        landed = landed_tensors(module)
        for role, tensor in roles.items():
            if role == "alpha":
                continue
            if role in landed and same_values(landed[role], tensor):
                applied += 1
            else:
                value_mismatches.append(f"{built.file_names[name]}.{role}")
        algo = built.algos[name]
        scaled, rank = declared_rank(algo, roles)
        declared = None
        if scaled:  # alpha / rank, as the file declares them (no alpha: alpha = rank; LoKr's full factors: 1)
            alpha = float(roles["alpha"]) if "alpha" in roles else 0.0
            declared = 1.0 if rank is None else (alpha or rank) / rank
            expected[name], alphas[name], ranks[name] = declared, alpha or None, rank
        # LyCORIS's own scale where it has one; the others apply at the multiplier alone
        scales[name] = float(module.scale) if scaled else 1.0
        lora_params += sum(p.numel() for p in module.parameters())
        if algo == "LoCon":  # a plain LoRA: weight_health's spectrum from the factors
            factors[name] = (roles["lora_down.weight"], roles["lora_up.weight"], declared)
        else:
            lycoris_factors[name] = LycorisFactors(roles, declared if declared is not None else 1.0, module, algo)
    scale_mismatches = [
        (name, expected[name], scales[name])
        for name in expected
        if not torch.isclose(torch.tensor(scales[name]), torch.tensor(expected[name]), rtol=1e-5)
    ]
    refused_keys = {key for key, _ in built.refused}
    ups = [k for k in tensor_keys if k.endswith(".lora_up.weight") and k not in refused_keys]
    kinds = sorted(set(built.algos.values()))
    return Application(
        adapter_name=adapter_name,
        format=PREFIXED if all(k.startswith(OWN_PREFIX) for k in adapter.tensors) else KOHYA_NAMED,
        family=base_signature.family,
        **tensor_facts(adapter, tensor_keys),
        tensors_applied=applied,
        lora_params=lora_params,
        rank=most_common(r for r in ranks.values() if r is not None),
        alpha=most_common(a for a in alphas.values() if a is not None),
        scale=most_common(scales.values()),
        scales=scales,
        unmatched=built.unmatched,
        refused=built.refused,
        value_mismatches=value_mismatches,
        scale_mismatches=scale_mismatches,
        zero_up=[k for k in ups if not adapter.tensors[k].any()],
        up_tensors=len(ups),
        lora_layers=dict(built.network.modules),
        layer_params={
            name: sum(p.numel() for p in module.parameters()) for name, module in built.network.modules.items()
        },
        factors=factors,
        lycoris_factors=lycoris_factors,
        ranks=sorted({r for r in ranks.values() if r is not None}),
        alphas=sorted({a for a in alphas.values() if a is not None}),
        dora_modules=sum("dora_scale" in modules[file_name] for file_name in built.file_names.values()),
        kind="+".join(kinds),
        architecture=base_signature.architecture,
        on_base=LycorisOnBase(pipeline, built.network),
    )


KIND = AdapterKind("LyCORIS", _claims, apply_lycoris)
