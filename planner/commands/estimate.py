"""`paraplan estimate`: days, GPU-hours and dollars to train a model on a token budget, across GPU
types and cluster sizes; the cheapest option within a deadline; the smallest cluster that fits."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from planner.commands.common import add_stack_arg, console
from planner.stack import DEFAULT_STACK
from planner.cost.flops import model_flops_per_step
from planner.cost.params import total_params
from planner.estimate import DEFAULT_GPUS, check_inputs, estimate
from planner.money import Estimate, GoodputSettings, Option, clusters_for, parse_count
from planner.report import estimate_html
from planner.schema import InputError, read_json
from planner.search.space import DEFAULT_BATCH_TOKENS, batch_sequences
from planner.transformer import load_transformer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="time and money to train on a token budget",
                       description="For each GPU type and cluster size: the best plan, step time, "
                                   "tokens/s, MFU, days, GPU-hours and cost; the cheapest option "
                                   "within a deadline; the smallest cluster that fits.")
    p.add_argument("--transformer", "-t", required=True, help="preset, spec JSON or HF config")
    p.add_argument("--tokens", required=True,
                   help="training tokens: 15T, 300B, ... or 20x (tokens per parameter)")
    p.add_argument("--gpus", default=",".join(DEFAULT_GPUS),
                   help=f"comma-separated GPU types or cluster presets (default {','.join(DEFAULT_GPUS)})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-gpus", help="comma-separated cluster sizes (default 256,512,1024,2048)")
    size.add_argument("--deadline-days", type=float,
                      help="grow each GPU type's cluster until it trains within this many days")
    p.add_argument("--max-gpus", type=int, default=16384,
                   help="largest cluster to consider for --deadline-days and the smallest-fit "
                        "sweep (default 16384)")
    p.add_argument("--global-batch-tokens", default=None,
                   help="tokens per step (default 4M = 4 x 2^20, as `paraplan search`), over the "
                        "sequence length rounded to a power of two")
    p.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                   help="override the rent per GPU-hour, e.g. --price h100=2.5 (repeatable)")
    p.add_argument("--prices", help='JSON file {"h100": 2.5, ...} of rent per GPU-hour')
    add_stack_arg(p)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp8", "fp32"])
    add_goodput_args(p)
    p.add_argument("--html", default="estimate.html", help="report path ('-' for none)")
    p.add_argument("--json", action="store_true", help="print the options as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def add_goodput_args(p: argparse.ArgumentParser) -> None:
    """Overrides of the reliability and storage data (estimate and search --goodput)."""
    g = p.add_argument_group("failures and checkpoints (goodput)")
    g.add_argument("--mtbf-gpu-hours", type=float, metavar="H",
                   help="per-GPU mean time between job interruptions, hours (default: the GPU's "
                        "reliability profile, e.g. h100: 50,700 h from Llama 3's 419 in 54 days)")
    g.add_argument("--checkpoint-gbps", type=float, metavar="GB/s",
                   help="checkpoint write bandwidth per node in GB/s (bytes; default: the "
                        "storage profile's)")
    g.add_argument("--restart-minutes", type=float, metavar="MIN",
                   help="minutes from an interruption to training again (default: the profile's)")
    g.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="checkpoint every this many steps (default: the Young/Daly optimum)")
    g.add_argument("--storage", metavar="NAME|FILE",
                   help="checkpoint storage preset (parallel_fs, local_nvme) or JSON (default: "
                        "the cluster's `storage`, parallel_fs)")


def goodput_settings(args: argparse.Namespace) -> GoodputSettings:
    """The goodput overrides of `args` (InputError naming the flag for a value <= 0)."""
    return GoodputSettings(mtbf_gpu_hours=args.mtbf_gpu_hours,
                           checkpoint_GBps=args.checkpoint_gbps,
                           restart_minutes=args.restart_minutes,
                           checkpoint_every=args.checkpoint_every, storage=args.storage)


def _rents(args: argparse.Namespace) -> dict[str, float]:
    pairs: dict[str, str] = {}
    if args.prices:
        data = read_json(Path(args.prices), f"--prices {args.prices}")
        if not isinstance(data, dict):
            raise InputError(f"--prices {args.prices}: expected a JSON object GPU -> USD per GPU-hour")
        pairs.update({str(k): str(v) for k, v in data.items()})
    for item in args.price:
        for part in item.split(","):
            if "=" not in part:
                raise InputError(f"--price {part!r}: expected GPU=USD, e.g. h100=2.5")
            k, v = part.split("=", 1)
            pairs[k] = v
    out = {}
    for gpu, value in pairs.items():
        try:
            usd = float(value)
        except ValueError:
            raise InputError(f"price for {gpu!r} must be a number of USD per GPU-hour, got "
                             f"{value!r}") from None
        if not usd > 0:
            raise InputError(f"price for {gpu!r} must be > 0 USD per GPU-hour, got {usd}")
        out[clusters_for([gpu])[0]] = usd
    return out


def run(args: argparse.Namespace) -> int:
    losses = goodput_settings(args)
    spec = load_transformer(args.transformer)
    n_params = total_params(spec)
    tokens = parse_count(args.tokens, "--tokens", params=n_params)
    batch_tokens = (DEFAULT_BATCH_TOKENS if args.global_batch_tokens is None else
                    parse_count(args.global_batch_tokens, "--global-batch-tokens"))
    gbs = batch_sequences(batch_tokens, spec.seq_len)
    names = clusters_for([g for g in args.gpus.split(",") if g.strip()])
    sizes = None
    if args.num_gpus:
        try:
            sizes = [int(x) for x in args.num_gpus.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--num-gpus must be comma-separated integers, got "
                             f"{args.num_gpus!r}") from None
    if args.deadline_days is not None and not args.deadline_days > 0:
        raise InputError(f"--deadline-days must be > 0, got {args.deadline_days}")
    check_inputs(names, sizes, args.precision)
    if args.max_gpus < 1:
        raise InputError(f"--max-gpus must be >= 1, got {args.max_gpus}")
    rents = _rents(args)
    out = console(args.json)
    flops = float(model_flops_per_step(spec, [1])[0]) / spec.seq_len * tokens
    intro = (f"{spec.name} ({n_params / 1e9:.2f}B parameters), {tokens / 1e12:.3g}T tokens "
             f"({flops:.3g} model FLOPs), global batch {gbs} x {spec.seq_len} = "
             f"{gbs * spec.seq_len / 1e6:.2f}M tokens, {args.precision}, {args.stack or DEFAULT_STACK} stack")
    out.print(intro)
    quiet = args.quiet or args.json or not sys.stderr.isatty()
    est = estimate(spec, names, tokens, gbs, sizes, args.deadline_days, rents, args.stack,
                   args.precision, None if quiet else
                   lambda what: console(True).print(f"  searching: {what}"),
                   max_gpus=args.max_gpus, goodput=losses)
    html = None
    if args.html != "-":
        html = estimate_html.write(args.html, est, f"paraplan estimate: {spec.name}", intro)
    if args.json:
        print(json.dumps(to_json(est, args.deadline_days, html), indent=2))
    else:
        show(est, args.deadline_days, html)
    if args.deadline_days is not None and est.cheapest(args.deadline_days) is None:
        return 1
    return 0 if any(o.fits for o in est.options) else 1


def _row(o: Option, marks: str) -> list[str]:
    if not o.fits:
        return [o.cluster.gpu.name, str(o.num_gpus), f"[red]does not fit[/] ({o.why_not})"] + [""] * 8
    p, r = o.plan, o.prediction
    return [o.cluster.gpu.name, str(o.num_gpus),
            f"{p.dp}.{p.tp}.{p.pp}.{p.cp} mb{p.micro_batch_size} v{p.virtual_pipeline_stages} "
            f"{p.zero_label} {p.recompute}{'+sp' if p.sequence_parallel else ''}",
            f"{r['step_time_s']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%",
            f"{o.days:,.1f}", f"{o.gpu_hours / 1e6:,.2f}M",
            "-" if o.cost_usd is None else f"${o.cost_usd / 1e6:,.2f}M",
            "-" if o.rent_per_gpu_hour_usd is None else f"${o.rent_per_gpu_hour_usd:.2f}", marks]


def show(est: Estimate, deadline: float | None, html: Path | None) -> None:
    out = console()
    cheap, fast = est.cheapest(deadline), est.fastest()
    front = {id(o) for o in est.pareto()}
    t = Table(title="options (plan: dp.tp.pp.cp)", title_justify="left")
    for col in ("GPU", "GPUs", "best plan", "step s", "tokens/s", "MFU", "days", "GPU-hours",
                "cost", "$/GPU-h", ""):
        t.add_column(col, justify="left" if col in ("GPU", "best plan", "") else "right")
    for o in est.options:
        marks = " ".join(m for m, ok in (("cheapest", o is cheap), ("fastest", o is fast),
                                          ("pareto", id(o) in front)) if ok)
        t.add_row(*_row(o, marks))
    out.print(t)
    out.print(_losses_table(est))
    for name, o in est.smallest.items():
        out.print(f"smallest cluster that fits ({o.cluster.gpu.name}, powers of two nodes): "
                  f"{o.num_gpus} GPUs, {o.days:,.0f} days")
    missing = [n for n in {o.cluster.name for o in est.options} if n not in est.smallest]
    for name in missing:
        out.print(f"[red]{name}: no cluster in the sweep (up to --max-gpus) fits this model[/]")
    if deadline is not None:
        if cheap:
            out.print(f"cheapest within {deadline:g} days: [bold]{cheap.cluster.gpu.name} x "
                      f"{cheap.num_gpus}[/], {cheap.days:.1f} days, ${cheap.cost_usd / 1e6:.2f}M")
        else:
            _explain_deadline(est, deadline)
    elif cheap:
        out.print(f"cheapest: [bold]{cheap.cluster.gpu.name} x {cheap.num_gpus}[/] "
                  f"(${cheap.cost_usd / 1e6:.2f}M, {cheap.days:.1f} days); fastest: "
                  f"{fast.cluster.gpu.name} x {fast.num_gpus} ({fast.days:.1f} days)")
    if html:
        out.print(f"report written to [bold]{html}[/]")


def _span(v: float, rng: tuple[float, float] | list[float], fmt: str) -> str:
    return f"{fmt.format(v)} ({fmt.format(rng[0])}-{fmt.format(rng[1])})"


def _duration(seconds: float) -> str:
    return (f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def _losses_table(est: Estimate) -> Table:
    """Days and dollars after failures, restarts and checkpoint stalls (planner.goodput)."""
    t = Table(title="with failures, restarts and checkpoint stalls (range: step-time band x "
                    "failure-rate range)", title_justify="left")
    for col in ("GPU", "GPUs", "goodput %", "ckpt every", "stall", "GB/node", "failures",
                "days w/ losses", "cost w/ losses"):
        t.add_column(col, justify="left" if col == "GPU" else "right")
    for o in est.options:
        if not o.fits:
            continue
        g = o.goodput
        money = (lambda v: f"${v / 1e6:,.1f}M")
        t.add_row(o.cluster.gpu.name, str(o.num_gpus),
                  _span(100 * g.goodput_fraction,
                        [100 * x for x in g.goodput_fraction_range], "{:.1f}"),
                  _duration(g.checkpoint_interval_s),
                  _duration(g.checkpoint_stall_s) + (" async" if o.async_checkpoint else ""),
                  f"{o.checkpoint_bytes_per_node / 1e9:,.1f}",
                  _span(g.interruptions, g.interruptions_range, "{:,.0f}"),
                  _span(g.days_with_losses, g.days_with_losses_range, "{:,.1f}"),
                  "-" if g.cost_usd_with_losses is None else
                  f"{money(g.cost_usd_with_losses)} ({g.cost_usd_with_losses_range[0] / 1e6:,.0f}"
                  f"-{g.cost_usd_with_losses_range[1] / 1e6:,.0f}M)")
    return t


def _explain_deadline(est: Estimate, deadline: float) -> None:
    out = console()
    fast = est.fastest()
    if fast is None:
        out.print(f"[red]no option fits in memory, so none meets {deadline:g} days[/]")
        return
    need = fast.num_gpus * fast.days / deadline
    out.print(f"[red]no option meets {deadline:g} days.[/] The fastest is {fast.cluster.gpu.name} x "
              f"{fast.num_gpus} at {fast.days:.2g} days; at its efficiency about {need:,.0f} "
              f"GPUs would be needed (if scaling held), or allow {fast.days:.2g} days or more.")


def to_json(est: Estimate, deadline: float | None, html: Path | None) -> dict:
    def one(o: Option) -> dict:
        return {"gpu": o.cluster.gpu.name, "cluster": o.cluster.name, "num_gpus": o.num_gpus,
                "fits": o.fits, "plan": o.plan.to_json_dict() if o.plan else None,
                "step_time_s": o.prediction["step_time_s"] if o.fits else None,
                "tokens_per_s": o.prediction["tokens_per_s"] if o.fits else None,
                "mfu": o.prediction["mfu"] if o.fits else None,
                "days": o.days if o.fits else None, "gpu_hours": o.gpu_hours if o.fits else None,
                "cost_usd": o.cost_usd, "rent_per_gpu_hour_usd": o.rent_per_gpu_hour_usd,
                "why_not": o.why_not or None, **_goodput_json(o)}
    cheap = est.cheapest(deadline)
    return {"options": [one(o) for o in est.options],
            "smallest_fitting": {k: one(o) for k, o in est.smallest.items()},
            "cheapest": one(cheap) if cheap else None,
            "fastest": one(est.fastest()) if est.fastest() else None,
            "pareto": [one(o) for o in est.pareto()], "deadline_days": deadline,
            "goodput_inputs": {k: asdict(v) for k, v in est.losses.items()},
            "html": str(html) if html else None}


GOODPUT_KEYS = ("goodput_fraction", "goodput_fraction_range", "checkpoint_interval_s",
                "checkpoint_stall_s", "cluster_mtbf_s", "lost_per_failure_s", "interruptions",
                "interruptions_range", "days_ideal_range", "days_with_losses",
                "days_with_losses_range", "gpu_hours_with_losses", "gpu_hours_with_losses_range",
                "cost_usd_with_losses", "cost_usd_with_losses_range")


def _goodput_json(o: Option) -> dict:
    """The option's goodput keys (None where it does not fit)."""
    g = o.goodput.as_dict() if o.goodput else {}
    return {"checkpoint_bytes_per_node": o.checkpoint_bytes_per_node,
            "async_checkpoint": o.async_checkpoint if o.fits else None,
            **{k: g.get(k) for k in GOODPUT_KEYS}}
