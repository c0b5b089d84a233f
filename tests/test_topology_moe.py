"""Tier 1: topology for mixture-of-experts. Multi-node NVLink domains (GB200 NVL72), the expert
groups (ep, etp, edp) of parallel folding, and the all-to-all cost on a link."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.comms import Link
from planner.cost.efficiency import curve
from planner.cost.layout import link_arrays
from planner.hardware import Cluster, load_cluster, preset_names
from planner.nvlink_domain import gpus_per_domain
from planner.plan import ORDERS, Plan
from planner.plan_arrays import PlanArrays
from planner.topology import ALL_KINDS, KINDS, Topology, rank_groups

DEFAULT = "tp-cp-dp-pp"
GiB = 2.0 ** 30


def _plan_arrays(layouts: list[tuple[int, int, int, int, int, int]]) -> PlanArrays:
    """(tp, cp, dp, pp, ep, etp) rows as PlanArrays (default order)."""
    return PlanArrays.from_plans([
        Plan(tp=tp, cp=cp, dp=dp, pp=pp, ep=ep, etp=etp, micro_batch_size=1,
             global_batch_size=dp) for tp, cp, dp, pp, ep, etp in layouts])


def _ep_link(cluster: Cluster, tp: int, dp: int, pp: int, ep: int) -> Link:
    links, _ = link_arrays(Topology(cluster), _plan_arrays([(tp, 1, dp, pp, ep, 1)]))
    return links["ep"]


# --- the preset ------------------------------------------------------------------------------

def test_gb200_nvl72_preset():
    """One NVL72 rack = 9 units of 8 GPUs in one 72-GPU NVLink domain, 900 GB/s per direction
    per GPU, one 400 Gb/s NIC per GPU; its B200 runs above DGX B200's peak (1,200 W)."""
    c = load_cluster("gb200_nvl72")
    assert (c.gpus_per_node, c.num_gpus, gpus_per_domain(c)) == (8, 72, 72)
    assert c.intra_node.bandwidth_GBps == 900.0 and c.intra_node.topology == "switch"
    assert c.inter_node.nics_per_node * c.inter_node.nic_bandwidth_GBps == 8 * 50.0
    assert c.gpu.name == "gb200"
    assert c.gpu.peak_tflops.bf16 > load_cluster("dgx_b200").gpu.peak_tflops.bf16
    # The validation runs count gb200_nvl72 jobs in 8-GPU units: 256 GPUs = num_nodes 32.
    assert load_cluster("gb200_nvl72", num_nodes=32).num_gpus == 256


def test_every_other_preset_keeps_one_node_domains():
    for name in preset_names("clusters"):
        c = load_cluster(name)
        if name != "gb200_nvl72":
            assert c.intra_node.domain_gpus is None and gpus_per_domain(c) == c.gpus_per_node


def test_domain_must_be_whole_nodes_on_a_switch():
    data = load_cluster("gb200_nvl72").model_dump()
    data["intra_node"]["domain_gpus"] = 36
    with pytest.raises(ValueError, match="whole number of nodes"):
        Cluster.model_validate(data)
    mesh = load_cluster("mi300x_8").model_dump()
    mesh["intra_node"]["domain_gpus"] = 16
    with pytest.raises(ValueError, match="switch"):
        Cluster.model_validate(mesh)


def test_jobs_fill_the_fewest_racks_evenly_else_in_order():
    """256 GPUs: 4 racks of 64, as SLURM --segment=16 places the model zoo's EP=64 run; 264
    (33 units, no even split): racks filled in order, the last partial; 72: one rack."""
    for units, want in [(32, [64] * 4), (33, [72, 72, 72, 48]), (9, [72]), (2, [16])]:
        topo = Topology(load_cluster("gb200_nvl72", num_nodes=units))
        assert np.bincount(topo.domain_of).tolist() == want, units
    topo = Topology(load_cluster("gb200_nvl72", num_nodes=32))
    assert topo.graph.nodes["gpu63"]["domain"] == 0 and topo.graph.nodes["gpu64"]["domain"] == 1


def test_validation_run_ep64_on_256_gb200_stays_on_nvlink():
    """The model zoo's Qwen3-235B fp8 run (tp1 pp4 ep64 on 256 GPUs): every ep group is one
    64-GPU segment of one rack, so the all-to-all never touches InfiniBand; on 32 DGX H100
    nodes the same layout's ep groups span 8 nodes."""
    nvl = Topology(load_cluster("gb200_nvl72", num_nodes=32)).links(1, 1, 64, 4, DEFAULT, ep=64)
    dgx = Topology(load_cluster("dgx_h100", num_nodes=32)).links(1, 1, 64, 4, DEFAULT, ep=64)
    assert (nvl["ep"].tier, nvl["ep"].bandwidth_GBps, nvl["ep"].remote_fraction) == (
        "intra_node", 900.0, 0.0)
    assert (dgx["ep"].tier, dgx["ep"].nodes_spanned, dgx["ep"].nic_share_GBps) == (
        "inter_node", 8, 50.0)


# --- which link a group crosses --------------------------------------------------------------

def test_72_gpu_group_inside_one_rack_is_intra_domain():
    """72 ranks over 9 units of one rack: NVLink, although they span 9 'nodes'."""
    topo = Topology(load_cluster("gb200_nvl72", num_nodes=9))
    g = topo.links(1, 1, 72, 1, DEFAULT, ep=72)
    edp = topo.links(1, 1, 72, 1, DEFAULT, ep=8)["edp"]  # 9 ranks, one per unit
    for gl in (g["dp"], g["ep"], edp):
        assert (gl.tier, gl.bandwidth_GBps) == ("intra_node", 900.0), gl.kind
    assert (edp.size, edp.nodes_spanned, edp.ranks_per_node) == (9, 9, 1)
    assert (g["ep"].nodes_spanned, g["ep"].ranks_per_domain, g["ep"].domains_spanned) == (9, 72, 1)
    assert g["ep"].remote_fraction == 0.0 and g["ep"].nic_share_GBps == float("inf")


def test_tp16_spans_two_units_on_nvlink_but_two_dgx_nodes_on_ib():
    nvl = Topology(load_cluster("gb200_nvl72", num_nodes=2)).links(16, 1, 1, 1, DEFAULT)["tp"]
    dgx = Topology(load_cluster("dgx_b200", num_nodes=2)).links(16, 1, 1, 1, DEFAULT)["tp"]
    assert (nvl.tier, nvl.bandwidth_GBps) == ("intra_node", 900.0)
    assert (dgx.tier, dgx.bandwidth_GBps) == ("inter_node", 400.0)


def test_ep64_nvlink_bound_on_nvl72_ib_bound_on_dgx_h100():
    """ep=64 on 64 GPUs: inside one NVL72 domain every byte goes over NVLink; on 8 DGX H100
    nodes 56 of 64 per-peer shares leave the node through one 50 GB/s NIC per GPU."""
    S = 1.0 * GiB
    nvl, dgx = load_cluster("gb200_nvl72", num_nodes=8), load_cluster("dgx_h100", num_nodes=8)
    g_nvl = Topology(nvl).links(1, 1, 64, 1, DEFAULT, ep=64)["ep"]
    g_dgx = Topology(dgx).links(1, 1, 64, 1, DEFAULT, ep=64)["ep"]
    assert (g_nvl.tier, g_nvl.bandwidth_GBps, g_nvl.remote_fraction) == ("intra_node", 900.0, 0.0)
    assert g_dgx.tier == "inter_node"
    assert (g_dgx.remote_fraction, g_dgx.nic_share_GBps) == (56 / 64, 50.0)
    t_nvl = _ep_link(nvl, 1, 64, 1, 64).all_to_all(np.array([S]))[0]
    t_dgx = _ep_link(dgx, 1, 64, 1, 64).all_to_all(np.array([S]))[0]
    lk_nvl, lk_dgx = nvl.intra_node, dgx.inter_node
    assert t_nvl == pytest.approx(63 * lk_nvl.latency_s + 63 / 64 * S / (
        900e9 * curve(lk_nvl.efficiency, np.array([S / 1e6]))[0]))
    # IB-bound: the NIC part (56/64 over 50 GB/s) dominates the NVLink part (7/64 over 450).
    assert t_dgx == pytest.approx(63 * lk_dgx.latency_s + 56 / 64 * S / (
        50e9 * curve(lk_dgx.efficiency, np.array([S / 1e6]))[0]))
    assert t_dgx > 10 * t_nvl


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("ep,etp", [(2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (2, 4), (1, 8)])
def test_ep_group_stays_in_a_dgx_node_under_default_order(tp, ep, etp):
    """Parallel folding under tp-cp-dp-pp: ep*etp <= 8 keeps ep and etp groups in a node."""
    topo = Topology(load_cluster("dgx_h100", num_nodes=4))
    for pp in (1, 2):
        g = topo.links(tp, 1, 32 // (tp * pp), pp, DEFAULT, ep=ep, etp=etp)
        for kind in ("ep", "etp"):
            if g[kind].size > 1:
                assert (g[kind].nodes_spanned, g[kind].tier) == (1, "intra_node"), (kind, pp)
        assert g["ep"].size == ep and g["etp"].size == etp
        assert g["edp"].size == tp * (32 // (tp * pp)) // (ep * etp)


def test_links_old_signature_and_cache_key():
    topo = Topology(load_cluster("dgx_h100", num_nodes=16))
    old = topo.links(1, 1, 128, 1, DEFAULT)
    assert set(old) == set(ALL_KINDS) and old["ep"].size == 1 and old["edp"].size == 128
    assert topo.links(1, 1, 128, 1, DEFAULT, ep=1, etp=1) == old  # cached: same GroupLinks
    assert set(topo.links(1, 1, 128, 1, DEFAULT, experts=False)) == set(KINDS)
    e8, e64 = topo.links(1, 1, 128, 1, DEFAULT, ep=8), topo.links(1, 1, 128, 1, DEFAULT, ep=64)
    assert (e8["ep"].size, e8["ep"].tier) == (8, "intra_node")
    assert (e64["ep"].size, e64["ep"].tier) == (64, "inter_node")
    assert topo.links(1, 1, 128, 1, DEFAULT, ep=8, etp=2)["etp"].size == 2
    assert {k: old[k] for k in KINDS} == {k: e64[k] for k in KINDS}  # dense kinds unchanged


def test_link_arrays_key_on_ep_and_etp():
    P = _plan_arrays([(1, 1, 64, 1, 8, 1), (1, 1, 64, 1, 64, 1), (1, 1, 64, 1, 8, 1),
                      (1, 1, 64, 1, 4, 2)])
    links, layouts = link_arrays(Topology(load_cluster("dgx_h100", num_nodes=8)), P)
    assert len(layouts) == 3
    assert links["ep"].n.tolist() == [8, 64, 8, 4] and links["etp"].n.tolist() == [1, 1, 1, 2]
    assert links["edp"].n.tolist() == [8, 1, 8, 8]
    assert links["ep"].remote_fraction.tolist() == [0.0, 56 / 64, 0.0, 0.0]
    assert links["dp"].n.tolist() == [64] * 4


# --- all-to-all on a link --------------------------------------------------------------------

def _flat(n: float, bw: float = 100.0, lat: float = 2e-6) -> Link:
    return Link(n=np.array([n]), bandwidth_GBps=np.array([bw]), latency_s=np.array([lat]),
                call_latency_s=np.array([0.0]), curve_id=np.array([0]), curves=(((1.0, 1.0),),))


def test_all_to_all_by_hand_and_nccl_busbw():
    """t = (n-1) alpha + (n-1)/n S / (B eff(S/n)); nccl-tests busbw = (n-1)/n S / t -> B."""
    S = 4 * GiB
    t = _flat(8).all_to_all(np.array([S]))[0]
    assert t == pytest.approx(7 * 2e-6 + 7 / 8 * S / 100e9)
    assert 7 / 8 * S / t / 1e9 == pytest.approx(100.0, rel=1e-3)


def test_all_to_all_volume_law():
    """Doubling the message about doubles the time at large sizes (past the efficiency curve's
    last knot, 8.6 GB); a group of one is free."""
    c = load_cluster("dgx_h100", num_nodes=8)
    for lk in (_flat(8), _ep_link(c, 1, 64, 1, 8), _ep_link(c, 1, 64, 1, 64)):
        S = 16 * GiB
        big = lk.all_to_all(np.array([S]))[0]
        assert 1.99 < lk.all_to_all(np.array([2 * S]))[0] / big <= 2.0 + 1e-9
    assert _flat(1).all_to_all(np.array([GiB]))[0] == 0.0
    assert _ep_link(c, 8, 8, 1, 1).all_to_all(np.array([GiB]))[0] == 0.0


def test_all_to_all_efficiency_is_read_at_the_message_like_all_gather():
    """Same bus volume (n-1)/n S and same curve point as a ring all-gather of S; the all-to-all
    pays one latency step per peer as the ring does. So on one link the two agree."""
    lk = _ep_link(load_cluster("gb200_nvl72", num_nodes=9), 1, 72, 1, 8)
    eff = curve(load_cluster("gb200_nvl72").intra_node.efficiency, np.array([64.0]))[0]
    t = lk.all_to_all(np.array([64e6]))[0]
    assert t == pytest.approx(7 * 1e-6 + 7 / 8 * 64e6 / (900e9 * eff))
    assert t == pytest.approx(lk.all_gather(np.array([64e6]))[0])


# --- every existing preset: the same GroupLinks as the node-only model -----------------------

def _legacy(cluster: Cluster, layout: tuple[int, int, int, int, str]) -> dict[str, tuple]:
    """The pre-domain rule, written out from its description: a node is the NVLink domain;
    a crossing ring gets the node uplink over the spanning groups touching the node (max over
    nodes), pp its senders; without pool_nics one NIC share per GPU."""
    tp, cp, dp, pp, order = layout
    G, intra, inter = cluster.gpus_per_node, cluster.intra_node, cluster.inter_node
    sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
    out = {}
    for kind in KINDS:
        groups = rank_groups(sizes, order, kind)
        n_g, size = groups.shape
        if size == 1:
            out[kind] = (1, 1, 1, "none", float("inf"))
            continue
        nodes = groups // G
        per = np.zeros((n_g, cluster.num_nodes), dtype=int)
        np.add.at(per, (np.arange(n_g)[:, None].repeat(size, 1), nodes), 1)
        k, spans = int(per.max()), (per > 0).sum(axis=1)
        if kind == "pp":
            cross = nodes[:, 1:] != nodes[:, :-1]
            flows = np.bincount(nodes[:, :-1][cross], minlength=cluster.num_nodes).max()
            peers = 1
        else:
            cross = spans > 1
            flows = ((per > 0) & cross[:, None]).sum(axis=0).max()
            peers = k - 1
        bw_in = float("inf")
        if G > 1 and (k > 1 or not cross.any()):
            bw_in = intra.bandwidth_GBps if intra.topology == "switch" else min(
                intra.bandwidth_GBps, max(1, peers) * intra.pair_bandwidth_GBps)
        if not cross.any():
            out[kind] = (size, k, int(spans.max()), "intra_node", bw_in)
            continue
        if not cluster.stack.pool_nics:
            flows = max(flows, G)
        bw_out = inter.nics_per_node * inter.nic_bandwidth_GBps / max(1, flows)
        tier, bw = ("intra_node", bw_in) if bw_in < bw_out else ("inter_node", bw_out)
        out[kind] = (size, k, int(spans.max()), tier, bw)
    return out


@pytest.mark.parametrize("name", [n for n in preset_names("clusters") if n != "gb200_nvl72"])
@pytest.mark.parametrize("stack", ["megatron-core", "megatron-lm-2021"])
def test_existing_presets_give_the_node_only_group_links(name, stack):
    for num_nodes in (1, 3, 16):
        cluster = load_cluster(name, num_nodes=num_nodes, stack=stack)
        topo, world = Topology(cluster), cluster.num_gpus
        for tp, cp, pp in [(1, 1, 1), (2, 1, 1), (8, 1, 2), (4, 2, 1), (1, 2, 3), (2, 1, 4)]:
            if world % (tp * cp * pp):
                continue
            for order in ORDERS[::3]:
                layout = (tp, cp, world // (tp * cp * pp), pp, order)
                got = topo.links(*layout)
                for kind, want in _legacy(cluster, layout).items():
                    g = got[kind]
                    assert (g.size, g.ranks_per_node, g.nodes_spanned, g.tier,
                            g.bandwidth_GBps) == want, (num_nodes, layout, kind)
                    assert (g.ranks_per_domain, g.domains_spanned) == (g.ranks_per_node,
                                                                       g.nodes_spanned)
