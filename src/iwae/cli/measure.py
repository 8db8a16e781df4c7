"""``iwae evaluate``, ``analyze``, ``snr``, ``compare`` and ``bdmc``: the commands that measure trained
runs (``iwae train`` is in :mod:`iwae.cli.runs`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .. import strict_json
from ..choices import ESTIMATORS, OBJECTIVES
from ..errors import CheckpointError, ConfigError
from .support import int_list as _int_list
from .support import interrupted as _interrupted
from .support import names as _names
from .support import set_threads as _threads
from .support import user_errors as _user_errors

LONG_SECONDS = 10  # iwae evaluate says how long an L_k pass will take when it is longer than this

# Each command imports the library code it calls when it runs, not here: that code loads PyTorch, which
# ``iwae --help`` and ``iwae COMMAND --help`` must not (tests/test_cli_startup.py checks it).


EVALUATE_EXAMPLES = """
\b
Examples:
  iwae evaluate runs/iwae-k5                       # test NLL by L_5000 and active units
  iwae evaluate runs/iwae-k5 --k 100 --test-subset 1000 --json
  iwae evaluate runs/iwae-k5 --method ais --test-subset 100   # AIS: T = 1000, C = 16, L = 5; and AIS - L_k
  iwae evaluate runs/iwae-seeds --test-subset 1000 # a folder of --seeds runs: each seed, mean ± sd
  iwae evaluate runs/vae runs/iwae --k 500         # several runs, one after another
  iwae evaluate runs/mine --dataset npz:/new/place/mine.npz   # the run's data file has moved
"""


@click.command(epilog=EVALUATE_EXAMPLES)
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path())
@click.option("--k", "k", type=int, default=5000, show_default=True, help="Importance samples per test image.")
@click.option("--test-subset", type=int, help="Evaluate on the first N test images only.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option(
    "--dataset",
    metavar="npz:PATH",
    help="The run's own data file where it has moved since training (user arrays only; checked to be the "
    "data the run was trained on).",
)
@click.option("--memory-budget", type=float, default=1.0, show_default=True, help="GiB a decoder call may use.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the importance samples.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.  [default: torch's, at most the free cores]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--method",
    type=click.Choice(["lk", "ais"]),
    default="lk",
    show_default=True,
    help="lk: the bound L_k; ais: annealed importance sampling (Wu et al. 2017).",
)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="ais: annealing steps T.")
@click.option("--chains", type=click.IntRange(min=1), default=16, show_default=True, help="ais: chains C per image.")
@click.option(
    "--leapfrog",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="ais: leapfrog steps L per HMC transition.",
)
@click.option(
    "--schedule",
    type=click.Choice(["sigmoid", "linear"]),
    default="sigmoid",
    show_default=True,
    help="ais: the schedule of the inverse temperatures.",
)
@click.option(
    "--initial",
    type=click.Choice(["encoder", "prior"]),
    default="encoder",
    show_default=True,
    help="ais: the initial distribution, q(z|x) or p(z).",
)
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Measure the data files as they are now although their SHA-256 changed since the run was trained "
    "(the evaluation records it, and iwae compare then asks for this flag too).",
)
@_user_errors
def evaluate(
    run_dirs,
    k,
    test_subset,
    as_json,
    data_dir,
    dataset,
    memory_budget,
    seed,
    device,
    threads,
    quiet,
    method,
    steps,
    chains,
    leapfrog,
    schedule,
    initial,
    accept_changed_data,
) -> None:
    """Test NLL = -mean L_k (with standard error) and active units of a trained run, measured with the
    weights of its last completed epoch (a run that has completed none is refused).

    The result, with the epoch and SHA-256 of the model measured, the seed, the test images used and
    the device, is also written to RUN_DIR/eval_k{K}_seed{S}.json (eval_k{K}_n{N}_seed{S}.json for the
    first N test images), and L_k of each test image to the .npy beside it. With --method ais, the
    AIS estimate of log p(x) instead, to RUN_DIR/ais_T{T}_C{C}_L{L}_{SCHEDULE}_{INITIAL}[_n{N}]_seed{S}.json
    and .npy, and the paired gap AIS - L_k to every L_k evaluation of the same images. The record holds
    the SHA-256 of the test images measured and how they were binarized; the data files must be those
    the run was trained on (their SHA-256 is checked). A long evaluation says its estimated time first;
    one estimated over a week is refused.

    RUN_DIR may be a folder of seeds (iwae train --seeds 0,1,2 --out DIR): each seed's run is
    evaluated (its files written in its folder), then the mean ± standard deviation over seeds.
    Several RUN_DIRs are evaluated one after another with the same settings, each under its name
    (with --json, a list of their results); each must be a run or a folder of seeds before the first
    is measured.
    """
    from ..evaluate import GIB, duration_text
    from ..rundir import check_run_or_seeds, is_seed_group

    # the arguments first: a bad value is said before anything about the folder (evaluate checks them again)
    for name, value in (("k", k), ("test_subset", test_subset)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    for run_dir in run_dirs:  # every folder before the first is measured: a typo must not wait an hour
        if not Path(run_dir).is_dir():
            raise CheckpointError(f"run directory {run_dir} not found")
        check_run_or_seeds(run_dir)
    if len({os.path.realpath(r) for r in run_dirs}) < len(run_dirs):
        raise click.UsageError("a run is given twice; give each RUN_DIR once")
    if dataset is not None and len(run_dirs) > 1:
        raise click.UsageError("--dataset names one run's moved data file: give one RUN_DIR with it")
    _threads(threads)
    _interrupted("interrupted; evaluation files are written whole or not at all: run the same command again")

    def announce_lk(cost: dict) -> None:
        if not as_json and cost["seconds"] > LONG_SECONDS:
            click.echo(
                f"L_{k} on {cost['images']} images: about {duration_text(cost['seconds'])} "
                f"({cost['rows']:.3g} importance samples)",
                err=True,
            )

    settings = dict(
        test_subset=test_subset,
        seed=seed,
        device=device,
        data_dir=data_dir,
        dataset=dataset,
        progress=not quiet and not as_json,
        accept_changed_data=accept_changed_data,
    )
    ais = dict(steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule, initial=initial)

    def announce(cost: dict) -> None:
        if not as_json:
            seconds, times = cost["seconds"], cost["passes_per_image"] / cost["l_k_passes_per_image"]
            took = f"about {seconds:.0f} s" if seconds >= 1 else "under 1 s"
            ratio = f"{times:.0f}" if times >= 10 else f"{times:.2g}"  # 0.4x, not 0x, for a short AIS
            click.echo(f"AIS on {cost['images']} images: {took} ({ratio}x the passes of L_5000)", err=True)

    def evaluate_one(run_dir: str) -> tuple[dict, str]:
        """The result of one RUN_DIR and the text that says it."""
        if is_seed_group(run_dir):
            from ..groups import evaluate_group, group_text

            def member_done(entry: dict) -> None:
                if not as_json:
                    r = entry["result"]
                    click.echo(f"seed {entry['seed']}: test NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f}", err=True)

            result = evaluate_group(
                run_dir,
                method=method,
                k=k,
                memory_budget=memory_budget * GIB,
                **settings,
                **ais,
                announce=announce,
                on_member=member_done,
                announce_lk=announce_lk,
            )
            return result, group_text(result)
        if method == "ais":
            from ..ais import ais_evaluate, ais_summary_text
            from ..compare import ais_gaps, gap_text

            result = ais_evaluate(run_dir, **ais, **settings, memory_budget=int(memory_budget * GIB), announce=announce)
            gaps = ais_gaps(run_dir, Path(result["files"]["json"]).stem)
            n = result["n_test"]
            text = gap_text(gaps) or (
                f"AIS - L_k  no L_k evaluation of these {n} images yet: iwae evaluate {run_dir} --test-subset {n} "
                f"makes one, and then this command prints AIS - L_k on them"
            )
            return {**result, "gaps": [g.to_dict() for g in gaps]}, ais_summary_text(result) + "\n" + text
        from ..evaluate import evaluate as run_evaluation
        from ..evaluate import summary_text

        result = run_evaluation(run_dir, k=k, memory_budget=memory_budget * GIB, announce=announce_lk, **settings)
        return result, summary_text(result)

    results = []
    for i, run_dir in enumerate(run_dirs):
        if len(run_dirs) > 1 and not as_json:
            click.echo(("\n" if i else "") + f"{run_dir}:")
        result, text = evaluate_one(run_dir)
        results.append(result)
        if not as_json:
            click.echo(text)
    if as_json:
        click.echo(strict_json.dumps(results[0] if len(results) == 1 else results, indent=1))


ANALYZE_EXAMPLES = """
\b
Examples:
  iwae analyze runs/iwae-k5                        # ELBO surgery on the first 5,000 training images
  iwae analyze runs/iwae-k5 --subset 59600 --samples 2 --json
"""


@click.command(epilog=ANALYZE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--subset", type=click.IntRange(min=1), default=5000, show_default=True, help="The first N training images."
)
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Samples z per image.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples (and of a binarization).")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Use the data files as they are now although their SHA-256 changed since the run was trained.",
)
@_user_errors
def analyze(run_dir, subset, samples, as_json, data_dir, seed, accept_changed_data) -> None:
    """ELBO surgery (Hoffman & Johnson 2016) of a trained 1-layer run on training images: reconstruction,
    average KL(q(z|x) || p(z)) = I[n; z] + KL(q(z) || p(z)), each with its standard error. For an hvae run,
    of z2: the KL of q(z2|x), the rest of the ELBO as the reconstruction.

    The result is also written to RUN_DIR/surgery_n{N}.json.
    """
    from ..analysis import run_surgery, surgery_text
    from ..rundir import open_run

    # never the initial weights of a run that has not trained, nor data files changed since it was trained
    run = open_run(run_dir, data_dir=data_dir, accept_changed_data=accept_changed_data)
    result = run_surgery(
        run.model, run.splits, run_dir, weights=run.weights, subset=subset, num_samples=samples, seed=seed
    )
    click.echo(strict_json.dumps(result, indent=1) if as_json else surgery_text(result))


SNR_EXAMPLES = """
\b
Examples:
  iwae snr --fresh --out results/snr                       # Burda 1-layer net at initialisation
  iwae snr runs/iwae-k50 --repeats 500 --out results/snr-trained
  iwae snr --fresh --objectives iwae --estimators reparam,dreg,stl --k 1,8,64 --out results/snr-k
"""


@click.command(epilog=SNR_EXAMPLES)
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--fresh", is_flag=True, help="Measure a freshly initialised Burda 1-layer MNIST model instead of a run.")
@click.option(
    "--k",
    "ks",
    default="1,4,16,64",
    show_default=True,
    help="Total samples K for the one-group objectives (iwae, vae, ciwae).",
)
@click.option("--m", "ms", help="Groups M for miwae and piwae.  [default: 1,4,16]")
@click.option(
    "--group-k",
    type=int,
    default=4,
    show_default=True,
    help="Samples per group K of MIWAE(M, K), held fixed while M varies (total M*K).",
)
@click.option(
    "--estimators",
    default="reparam,dreg",
    show_default=True,
    help=f"Comma-separated encoder estimators: {', '.join(ESTIMATORS)}.",
)
@click.option(
    "--objectives",
    default="iwae,miwae",
    show_default=True,
    help=f"Comma-separated objectives: {', '.join(OBJECTIVES)}.",
)
@click.option(
    "--repeats", type=int, default=200, show_default=True, help="Independent gradient estimates R per point (>= 2)."
)
@click.option(
    "--batch-size",
    type=int,
    default=20,
    show_default=True,
    help="The fixed batch: the first N training images, binarized once.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples (and of a --fresh init).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder for snr.csv, snr_layers.csv and snr.png."
)
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (rows and slopes).")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Use the data files as they are now although their SHA-256 changed since the run was trained.",
)
@_user_errors
def snr(
    run_dir,
    fresh,
    ks,
    ms,
    group_k,
    estimators,
    objectives,
    repeats,
    batch_size,
    seed,
    data_dir,
    out,
    threads,
    as_json,
    accept_changed_data,
) -> None:
    """Gradient signal-to-noise ratio, |mean| / std per parameter, of each objective and estimator
    over R estimates on one fixed batch, summarised for the encoder and the decoder (Rainforth
    et al. 2018). Writes OUT/snr.csv, OUT/snr_layers.csv and OUT/snr.png (SNR against K for
    IWAE, against M at fixed K per group for MIWAE, with fitted log-log slopes)."""
    from .. import snr as snr_module
    from ..data import load_dataset

    # everything about the arguments first: a bad value must not wait for the data
    if bool(run_dir) == fresh:
        raise click.UsageError("give either RUN_DIR or --fresh (a freshly initialised model), not both or neither")
    study = snr_module.plan_study(
        _names(objectives),
        _names(estimators),
        _int_list(ks, "--k"),
        _int_list(ms, "--m"),
        group_k,
        repeats,
        batch_size,
        seed,
    )
    _threads(threads)
    if fresh:
        splits = load_dataset("mnist", data_dir)
        model = snr_module.fresh_model(splits, seed)
        source = f"fresh Burda 1-layer model (seed {seed})"
    else:
        from ..rundir import open_run

        # never the initial weights of a run that has not trained, nor data files changed since it was trained
        run = open_run(run_dir, data_dir=data_dir, accept_changed_data=accept_changed_data)
        model, splits = run.model, run.splits
        source = f"run {run_dir}"
    if not as_json:
        click.echo(
            f"{len(study.specs)} points x {repeats} gradient estimates on {batch_size} {splits.name} "
            f"training images, {source}",
            err=True,
        )
    progress = None if as_json else lambda row: click.echo(snr_module.row_text(row), err=True)
    result = snr_module.run_study(study, model, splits, out, source=source, progress=progress)
    click.echo(strict_json.dumps(result, indent=1) if as_json else snr_module.study_text(result))


COMPARE_EXAMPLES = """
\b
Examples:
  iwae compare runs/iwae-k5 runs/vae-k5                     # the L_k evaluation both have
  iwae compare runs/iwae-k5 runs/vae-k5 --k 5000 --test-subset 1000   # when they have several
  iwae compare runs/iwae-k5 runs/vae-k5 --method ais        # their AIS evaluations
  iwae compare runs/iwae-seeds runs/vae-seeds               # folders of --seeds runs: seed s with seed s
  iwae compare runs/iwae-s0,runs/iwae-s1 runs/vae-s0,runs/vae-s1   # runs listed per seed, paired by position
"""


@click.command(epilog=COMPARE_EXAMPLES)
@click.argument("run_a")
@click.argument("run_b")
@click.option(
    "--method",
    type=click.Choice(["lk", "ais"]),
    default="lk",
    show_default=True,
    help="Compare the runs' L_k or AIS evaluations.",
)
@click.option("--k", "k", type=int, help="Only the evaluations of this k (iwae evaluate --k).")
@click.option("--test-subset", type=int, help="Only the evaluations of the first N test images.")
@click.option("--seed", type=int, help="Only the evaluations of this --seed.")
@click.option("--evaluation", metavar="NAME", help="This evaluation's file stem, e.g. eval_k5000_n500_seed0.")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Pair evaluations made with evaluate --accept-changed-data (on data files changed since training).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_user_errors
def compare(run_a, run_b, method, k, test_subset, seed, evaluation, accept_changed_data, as_json) -> None:
    """NLL(A) - NLL(B) on the same test images with its paired standard error, from the per-image
    values that `iwae evaluate` saved, and a verdict: which has the lower NLL, by how much, and
    whether the difference is resolved at 2 standard errors.

    The evaluation used is the one both runs have (the same method and settings, test images and
    seed); when several fit, the command lists them: choose with --k, --test-subset, --seed or
    --evaluation. One run a side, the standard error is evaluation noise only. RUN_A and RUN_B may be
    folders of seeds (iwae train --seeds), or comma-separated lists of runs (one per seed, paired by
    position): then the mean difference over seeds with its standard error across seeds, which
    includes the training noise.

    Two evaluations are paired only when they measured the same test tensor (its SHA-256), by the same
    method and settings, in the same units, on the data their runs were trained on; otherwise compare
    says why in one line. An evaluation written before it recorded its test images' SHA-256 must be made
    again (iwae evaluate)."""
    from ..compare import compare_runs, compare_text

    a, b = _names(run_a), _names(run_b)
    result = compare_runs(
        a[0] if len(a) == 1 else a,
        b[0] if len(b) == 1 else b,
        method=method,
        k=k,
        seed=seed,
        test_subset=test_subset,
        evaluation=evaluation,
        accept_changed_data=accept_changed_data,
    )
    click.echo(strict_json.dumps(result, indent=1) if as_json else compare_text(result))


BDMC_EXAMPLES = """
\b
Examples:
  iwae bdmc runs/iwae-k5                                   # 32 simulated images, T = 100 and 1000
  iwae bdmc runs/iwae-k5 --n 16 --steps 10,100,1000 --out bdmc.pdf
"""


@click.command(epilog=BDMC_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=32, show_default=True, help="Images simulated from the model."
)
@click.option("--steps", default="100,1000", show_default=True, help="Comma-separated annealing steps T.")
@click.option("--chains", type=click.IntRange(min=1), default=16, show_default=True, help="Chains C per image.")
@click.option("--leapfrog", type=click.IntRange(min=1), default=5, show_default=True, help="Leapfrog steps L.")
@click.option(
    "--initial",
    type=click.Choice(["encoder", "prior"]),
    default="encoder",
    show_default=True,
    help="Forward AIS's initial distribution.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Figure file; the JSON goes beside it.  [default: RUN_DIR/bdmc_n{N}_C{C}_L{L}_seed{S}.png]",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_user_errors
def bdmc(run_dir, n, steps, chains, leapfrog, initial, seed, device, threads, out, as_json) -> None:
    """Bidirectional Monte Carlo (Grosse et al. 2015) on images simulated from a trained run: forward
    AIS gives a stochastic lower bound of log p(x), reverse AIS from the simulated z an upper bound;
    their gap, for each T, bounds how wrong AIS is on data like this (Wu et al. 2017)."""
    from ..ais import bdmc_run, bdmc_text

    _threads(threads)
    result = bdmc_run(
        run_dir,
        n=n,
        steps=_int_list(steps, "--steps"),
        chains=chains,
        leapfrog=leapfrog,
        initial=initial,
        seed=seed,
        device=device,
        out=out,
    )
    click.echo(strict_json.dumps(result, indent=1) if as_json else bdmc_text(result))
