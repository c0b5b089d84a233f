"""Issue 'estimate': token and price parsing, and sanity checks against published training
budgets (cited), to the tolerance the model can claim."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.flops import model_flops_per_step
from planner.cost.params import total_params
from planner.hardware import load_cluster
from planner.money import batch_sequences, best_option, clusters_for, parse_count
from planner.schema import InputError
from planner.transformer import load_transformer


@pytest.mark.parametrize("text,value", [("15T", 15e12), ("300B", 3e11), ("4M", 4e6),
                                         ("1.5e12", 1.5e12), ("2,000B", 2e12), ("20x", 20 * 7e9)])
def test_parse_count(text, value):
    assert parse_count(text, "--tokens", params=7e9) == pytest.approx(value)


@pytest.mark.parametrize("text,needle", [("-5T", "must be > 0"), ("0", "must be > 0"),
                                         ("lots", "e.g. 15T"), ("20x", "cannot read")])
def test_parse_count_errors(text, needle):
    with pytest.raises(InputError, match=needle):
        parse_count(text, "--tokens")  # no params: '20x' is not accepted here


def test_batch_rounds_to_power_of_two():
    assert batch_sequences(4e6, 8192) == 512 and batch_sequences(16 * 2**20, 8192) == 2048
    assert batch_sequences(10, 8192) == 1


def test_gpu_names_resolve_to_cluster_presets():
    assert clusters_for(["h100", "A100_80G", "mi300x", "dgx_b200"]) == [
        "dgx_h100", "dgx_a100_80g", "mi300x_8", "dgx_b200"]
    with pytest.raises(InputError, match="ambiguous GPU 'a100'.*dgx_a100_40g"):
        clusters_for(["a100"])
    with pytest.raises(InputError, match="unknown GPU 'h900'; accepted: a100_40g"):
        clusters_for(["h900"])


def test_gpt3_training_compute():
    """Brown et al. 2020, Table D.1: GPT-3 175B trained on 300B tokens took 3.14e23 FLOPs, counted
    as 6 N D without attention. Our 6 N D is within 1%; model FLOPs add the attention term
    s/(6h) = 2.8% (and the LM head once more for tied embeddings)."""
    spec = load_transformer("gpt3-175b")
    six_nd = 6 * total_params(spec) * 300e9
    assert six_nd == pytest.approx(3.14e23, rel=0.01)
    ours = model_flops_per_step(spec, np.array([1]))[0] / spec.seq_len * 300e9
    assert 1.0 < ours / 3.14e23 < 1.05


@pytest.fixture(scope="module")
def llama3_405b_on_16k_h100():
    """Llama Team 2024 (arXiv 2407.21783), Table 4: 16,384 H100s, 16M-token batches (2048
    sequences of 8192), bf16."""
    spec = load_transformer("llama3-405b")
    return spec, best_option(spec, load_cluster("dgx_h100", 2048), 2048, 15.6e12, 6.88)


# The model's largest step-time error over the 25 validated runs (README "Accuracy",
# docs/accuracy.md): |predicted - measured| / measured <= 19.4%. GPU-hours scale with step time.
MAX_STEP_ERROR = 0.194


def test_llama3_405b_compute_and_gpu_hours(llama3_405b_on_16k_h100):
    """Bands from the sources, not from our result. The paper (section 3.3.1) counts 'about
    3.8 x 10^25 FLOPs' for 15.6T tokens (6 N D) and Table 4 reports 400 TFLOP/s per GPU on
    16,384 H100s at 8K context: 3.8e25 / 400e12 / 3600 = 26.4M GPU-hours of training. Ours must
    be within the model's largest validated step-time error of that (H100 is not validated, so
    the largest error, not the mean). The Llama 3.1 model card (github.com/meta-llama/
    llama-models, MODEL_CARD.md) bills 30.84M H100 GPU-hours: training plus restarts and
    checkpointing (the paper reports over 90% effective training time) and the long-context
    stage at 380 TFLOP/s (Table 4), none of which we model, so ours must not exceed the card."""
    spec, opt = llama3_405b_on_16k_h100
    flops = 6 * total_params(spec) * 15.6e12
    assert flops == pytest.approx(3.8e25, rel=0.01)
    assert opt.fits
    paper_hours = 3.8e25 / 400e12 / 3600
    assert 1 - MAX_STEP_ERROR <= opt.gpu_hours / paper_hours <= 1 + MAX_STEP_ERROR, opt.gpu_hours
    assert opt.gpu_hours <= 30.84e6


# Was xfail (0.66x on megatron-core before issue 12 item 2); the overlap slowdown of hidden
# FSDP / DP collectives (gpu.overlap_compute_slowdown, Lee et al. 2025) brings it into the band.
def test_llama2_70b_on_a100_gpu_hours():
    """Touvron et al. 2023 (Llama 2), Table 2: 70B on 2T tokens took 1,720,320 A100-80GB
    GPU-hours (Meta's RSC: 8 x 200 Gb/s InfiniBand per node), global batch 4M tokens (1024 x
    4096). Same caveat as above (project hours include overheads): 0.7x to 1.1x."""
    spec = load_transformer("llama2-70b")
    opt = best_option(spec, load_cluster("dgx_a100_80g", 256), 1024, 2e12, 3.43)
    assert 0.7 <= opt.gpu_hours / 1_720_320 <= 1.1, opt.gpu_hours
    assert opt.cost_usd == pytest.approx(opt.gpu_hours * 3.43)
