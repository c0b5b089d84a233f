"""Profiles written before stacks existed: a `software` block inside the cluster (calibrated CPU
profiles and refits of that time). `planner.hardware.load_cluster` reads such a block as the
profile's own stack, so old files keep working."""

from __future__ import annotations

# The fields a `software` block of a profile written before stacks existed may lack, and what
# they meant then (the cost model of that time had none of these behaviours).
_LEGACY_DEFAULTS = {"tp_comm_overlap": False, "param_gather_overlap": False,
                    "selective_recompute": "attention_core", "tp_shards_norms": False,
                    "fp8_cast_bytes_per_element": 0.0,
                    "async_checkpoint": False, "cp_impl": "ring", "activation_layout": "fused",
                    "grad_bucket_bytes": 25 * 2**20, "elementwise_traffic": 1.0,
                    "dp_step_overhead_s": 0.0, "fsdp_unit_overhead_s": 0.0,
                    "tp_block_overhead_s": 0.0, "sp_block_overhead_s": 0.0,
                    "pp_microbatch_overhead_s": 0.0, "optimizer_tensor_overhead_s": 0.0,
                    "cp_block_overhead_s": 0.0, "recompute_block_overhead_s": 0.0,
                    "fsdp_unit_step_overhead_s": 0.0,
                    "grad_overlap": True, "pool_nics": True, "zero_impl": "fsdp2"}


def split_legacy_software(data: dict) -> dict:
    """A profile written before stacks (a `software` block inside the cluster, as calibrated CPU
    profiles and refits were) as a cluster holding its own stack: the block's fields, its
    `software.*` sources, `flash_attention` read as the attention kernel, and the fields the
    block predates at what they meant then."""
    data = dict(data)
    sw = dict(data.pop("software"))
    sources = dict(data.get("sources", {}))
    stack_sources = {k.split(".", 1)[1]: sources.pop(k) for k in list(sources)
                     if k.startswith("software.")}
    flash = sw.pop("flash_attention", True)
    sw["attention_kernel"] = "flash_attention_2" if flash else "unfused_softmax"
    for k, v in _LEGACY_DEFAULTS.items():
        if k not in sw:
            sw[k] = v
            stack_sources.setdefault(k, "not in this profile's software block (written before "
                                        "stacks); what the cost model of that time assumed")
    if "flash_attention" in stack_sources:
        stack_sources["attention_kernel"] = stack_sources.pop("flash_attention")
    sw.setdefault("framework_memory_bytes", 0)
    data["stack"] = {"name": f"{data.get('name', 'profile')}-stack", **sw,
                     "sources": stack_sources}
    data["sources"] = sources
    return data
