"""Mutation check: do the tests notice a deliberate bug in the papers' protocol?

    python scripts/mutation_check.py                  # every mutation, ~5-10 minutes on 2 cores
    python scripts/mutation_check.py --only adam-eps-pytorch-default --only softsign-for-tanh
    python scripts/mutation_check.py --list           # names, files and the tests of each

Each entry of ``MUTATIONS`` is a named change: in ``file`` (relative to the repository root) the
exact text ``old``, which must occur exactly once, becomes ``new``. The script copies the repository
(without .git, .venv, runs/) to a temporary folder, checks that the selected tests pass on the
unchanged copy, then applies one mutation at a time and runs that mutation's tests with ``-x``
and ``PYTHONPATH`` pointing to the copy's ``src``. A mutation is *killed* when a test fails (or the
run exceeds ``--timeout``), *survived* when all its tests pass.

Exit status: 0 when every mutation is killed; 1 when one survived; 2 when an entry has drifted
(its old text is not in the file, or is there more than once: the code changed, so the entry must
be updated, and it is not counted as killed), or when a selected test fails on the unchanged copy.

Entries marked ``equivalent`` change nothing the package promises; they are listed with the reason
and not run. The datasets are read from the original checkout's ``../shared/data`` (or
``$IWAE_TEST_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "__pycache__", ".pytest_cache", "*.egg-info", ".mypy_cache", ".ruff_cache", "node_modules"
)
P = "tests/test_protocol.py::"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # exact text, must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    why: str = ""  # the promise it breaks
    equivalent: str | None = None  # why it changes nothing observable (then it is not run)


M = Mutation
MUTATIONS: list[Mutation] = [
    # --- Adam (Burda et al.: beta1 0.9, beta2 0.999, eps 1e-4)
    M(
        "adam-eps-pytorch-default",
        "src/iwae/config/train.py",
        "adam_eps: float = _setting(1e-4,",
        "adam_eps: float = _setting(1e-8,",
        (P + "test_training_uses_burdas_adam_settings", P + "test_adam_step_matches_the_hand_computed_update"),
        "Adam's eps is PyTorch's 1e-8 instead of Burda et al.'s 1e-4",
    ),
    M(
        "adam-eps-not-passed",
        "src/iwae/train/loop.py",
        "betas=(config.beta1, config.beta2), eps=config.adam_eps)",
        "betas=(config.beta1, config.beta2))",
        (P + "test_adam_step_matches_the_hand_computed_update", P + "test_training_uses_burdas_adam_settings"),
        "the optimiser ignores adam_eps (PyTorch's default 1e-8)",
    ),
    M(
        "adam-beta1-0.99",
        "src/iwae/config/train.py",
        "beta1: float = _setting(0.9,",
        "beta1: float = _setting(0.99,",
        (P + "test_training_uses_burdas_adam_settings",),
        "beta1 0.99 instead of 0.9",
    ),
    # --- initialisation
    M(
        "no-output-bias-init",
        "src/iwae/train/loop.py",
        "model.init_output_bias(splits.train.mean(0) if config.train_subset is None else x_train.mean(0))",
        "model.init_output_bias(torch.full_like(x_train[0], 0.5))",
        (P + "test_output_bias_starts_at_logit_of_the_mean_training_pixel",),
        "the decoder's output bias stays at logit(0.5) = 0 instead of logit(mean training pixel)",
    ),
    M(
        "output-bias-init-zero",
        "src/iwae/models/likelihoods.py",
        "bias.copy_(torch.log(p) - torch.log1p(-p))",
        "bias.zero_()",
        (
            P + "test_output_bias_starts_at_logit_of_the_mean_training_pixel",
            "tests/test_models.py::test_init_output_bias",
        ),
        "init_output_bias leaves the bias at zero",
    ),
    M(
        "vamp-pseudo-inputs-not-initialised",
        "src/iwae/train/loop.py",
        "model.init_prior(x_train)",
        "model.init_prior",
        (P + "test_vamp_pseudo_inputs_start_at_training_images",),
        "the VampPrior's pseudo-inputs start at ~0.5 instead of at training images",
    ),
    M(
        "vamp-pseudo-inputs-ignore-data",
        "src/iwae/models/priors.py",
        "u = x[idx] + noise * torch.randn(",
        "u = torch.rand_like(x[idx]) + noise * torch.randn(",
        (P + "test_vamp_pseudo_inputs_start_at_training_images",),
        "pseudo-inputs initialised with uniform noise, ignoring the images",
    ),
    # --- the validation bound
    M(
        "validation-reports-elbo",
        "src/iwae/train/loop.py",
        "iwae_bound(model.log_weights(xb, k, generator))",
        "model.log_weights(xb, k, generator).mean(0)",
        (P + "test_validation_column_is_the_iwae_bound_L_k",),
        "metrics.csv's validation column is the ELBO, not L_k",
    ),
    # --- KL warm-up
    M(
        "kl-warmup-ignored-in-loop",
        "src/iwae/train/loop.py",
        "warmup_weight = kl_weight(config, epoch)",
        "warmup_weight = 1.0",
        (P + "test_training_with_warmup_changes_the_first_epochs_encoder_update",),
        "the training loop trains at weight 1 whatever kl_warmup says",
    ),
    M(
        "kl-weight-always-one",
        "src/iwae/train/schedule.py",
        "return min(1.0, epoch / config.kl_warmup) if config.kl_warmup else 1.0",
        "return 1.0",
        (P + "test_kl_weight_rises_linearly_from_zero_to_one",),
        "the warm-up schedule is beta = 1 throughout",
    ),
    M(
        "kl-weight-dropped-by-estimator",
        "src/iwae/estimators.py",
        "result = gradient_terms(model, _kl_weighted(parts, kl_weight), spec)",
        "result = gradient_terms(model, parts, spec)",
        (
            P + "test_kl_weight_scales_the_encoder_gradient_of_log_p_z_minus_log_q",
            P + "test_training_with_warmup_changes_the_first_epochs_encoder_update",
        ),
        "the surrogate ignores the warm-up weight",
    ),
    # --- the encoder's gradient estimators (the table and the views of log q)
    M(
        "stl-view-keeps-layer-1-parameters",
        "src/iwae/estimators.py",
        "(post.loc.detach(), post.log_scale.detach()) if i == 0",
        "(post.loc, post.log_scale) if i == 0",
        ("tests/test_estimators.py::test_add_views_match_frozen_copies",),
        "the path view keeps q(z_1 | x)'s parameters: STL and DReG keep the score term they exist to drop",
    ),
    M(
        "rws-view-keeps-the-sample-below",
        "src/iwae/estimators.py",
        "else layer.loc_log_scale(*(a.detach() for a in h))",
        "else layer.loc_log_scale(*h)",
        ("tests/test_estimators.py::test_add_views_match_frozen_copies",),
        "RWS's view of q(z_2 | z_1) lets the gradient through the sample z_1",
    ),
    M(
        "dreg-without-the-priors-direct-term",
        "src/iwae/estimators.py",
        'tuple(o for o in _ALL if o != "vae")',
        "()",  # dreg's prior_direct objectives
        (
            "tests/test_estimators.py::test_gradient_terms_refuses_vamp_parts_without_the_prior_view",
            "tests/test_estimators.py::test_names_costs_and_views_are_read_from_the_table",
        ),
        "DReG gives the VampPrior's direct dependence on phi the path's weight w~^2 (a biased gradient)",
    ),
    # --- active units (Burda et al. Sec. 5.2)
    M(
        "active-units-on-grey-levels",
        "src/iwae/evaluate.py",
        "units = active_units(model, x_units.to(dev), generator=generator)",
        "units = active_units(model, splits.train[:ACTIVE_UNITS_IMAGES].to(dev), generator=generator)",
        (P + "test_active_units_use_burdas_threshold_on_binarized_training_images",),
        "active units computed on grey-level instead of binarized images",
    ),
    M(
        "active-threshold-0.05",
        "src/iwae/analysis/latent.py",
        "ACTIVE_THRESHOLD = 0.01",
        "ACTIVE_THRESHOLD = 0.05",
        (P + "test_active_units_use_burdas_threshold_on_binarized_training_images",),
        "a unit is active above 0.05 instead of 0.01",
    ),
    # --- the evaluation's memory budget
    M(
        "bytes-per-row-halved",
        "src/iwae/memory.py",
        "return element_size * (held + max(stages))",
        "return element_size * (held + max(stages)) // 2",
        (P + "test_log_likelihood_stays_within_its_memory_budget",),
        "the per-row memory estimate is halved: chunks twice as large as the budget allows",
    ),
    # --- the (M, K) grid of Rainforth et al.
    M(
        "grid-points-swap-m-k",
        "src/iwae/config/grid.py",
        "GridPoint(o, m, total // m) for o",
        "GridPoint(o, total // m, m) for o",
        (P + "test_grid_point_m_k_means_m_groups_of_k_samples",),
        "grid_points makes (total / M, M) of the M asked for",
    ),
    M(
        "grid-run-name-swap-m-k",
        "src/iwae/config/grid.py",
        'return f"{self.objective}-m{self.m}-k{self.k // self.m}"',
        'return f"{self.objective}-m{self.k // self.m}-k{self.m}"',
        (P + "test_grid_point_m_k_means_m_groups_of_k_samples",),
        "run directories named (K, M)",
    ),
    M(
        "grid-run-config-swap-m-k",
        "src/iwae/config/grid.py",
        "TrainConfig(objective=self.objective, k=self.k, m=self.m,",
        "TrainConfig(objective=self.objective, k=self.k, m=self.k // self.m,",
        (P + "test_grid_point_m_k_means_m_groups_of_k_samples",),
        "the run of MIWAE(M, K) trains MIWAE(K, M)",
    ),
    M(
        "grid-canonical-run-swap-m-k",
        "src/iwae/config/grid.py",
        "return Run(point.objective, total, m=point.m)",
        "return Run(point.objective, total, m=point.k)",
        (P + "test_grid_point_m_k_means_m_groups_of_k_samples",),
        "a grid point maps to the run of its transposed point",
    ),
    M(
        "grid-rows-swap-m-k",
        "src/iwae/config/grid.py",
        '"m": p.m, "k": p.k,',
        '"m": p.k, "k": p.m,',
        (P + "test_grid_rows_and_runs_keep_m_and_k",),
        "grid.csv's m and k columns swapped",
    ),
    # --- networks and samples
    M(
        "softsign-for-tanh",
        "src/iwae/models/networks.py",
        "y = torch.sigmoid(h * 2.0).mul_(2.0).sub_(1.0)",
        "y = torch.nn.functional.softsign(h)",
        (P + "test_tanh_is_tanh", P + "test_gaussian_mlp_is_the_papers_tanh_network"),
        "the hidden units are softsign, not tanh",
    ),
    M(
        "hvae-view-cuts-z2",
        "src/iwae/models/hvae.py",
        "return [((self.x,), z2), ((self.x, z2), z1)]",
        "return [((self.x,), z2), ((self.x, z2.detach()), z1)]",
        (
            "tests/test_hvae.py::test_views_keep_the_path_through_z2_into_q_z1",
            "tests/test_hvae_gradients.py::test_dreg_needs_the_path_through_z2",
        ),
        "the HVAE's detached-parameter view of q(z_1 | x, z_2) cuts the path through z_2 (STL and DReG biased)",
    ),
    M(
        "samples-skip-p-z1-given-z2",
        "src/iwae/analysis/latent.py",
        "zs.insert(0, loc + log_scale.exp() * eps)",
        "zs.insert(0, eps)",
        (
            P + "test_two_layer_samples_go_through_p_z1_given_z2",
            "tests/test_figure_inputs.py::test_sample_images_follow_the_ancestral_distribution",
        ),
        "samples of a 2-layer model draw z_1 from N(0, I), ignoring p(z_1 | z_2)",
    ),
    M(
        "samples-bottom-up",
        "src/iwae/analysis/latent.py",
        "for layer in reversed(model.decoder[1:]):",
        "for layer in model.decoder[1:]:",
        (P + "test_three_layer_samples_go_top_down",),
        "the layers' conditionals applied bottom-up (the same as top-down for 2 layers, which have one)",
    ),
    # --- dynamic binarization (Burda et al.)
    M(
        "no-dynamic-binarization",
        "src/iwae/train/loop.py",
        "x = data_module.binarize(x, generator)",
        "x = x",
        (P + "test_every_training_batch_is_a_fresh_binarization",),
        "training on grey levels",
    ),
    M(
        "binarization-every-other-epoch",
        "src/iwae/train/loop.py",
        "if splits.dynamic:",
        "if splits.dynamic and epoch % 2:",
        (P + "test_every_training_batch_is_a_fresh_binarization",),
        "grey levels in one epoch of two",
    ),
    M(
        "binarization-static-threshold",
        "src/iwae/train/loop.py",
        "x = data_module.binarize(x, generator)",
        "x = (x > 0.5).float()",
        (P + "test_every_training_batch_is_a_fresh_binarization",),
        "a fixed threshold at 0.5 instead of a Bernoulli sample",
    ),
    M(
        "binarization-same-every-epoch",
        "src/iwae/train/loop.py",
        "x = data_module.binarize(x, generator)",
        "x = data_module.binarize(x, torch.Generator(device=x.device).manual_seed(0))",
        (P + "test_every_training_batch_is_a_fresh_binarization",),
        "the same binarization at every use",
    ),
    M(
        "binarization-off-after-resume",
        "src/iwae/train/loop.py",
        "if splits.dynamic:",
        "if splits.dynamic and not resume:",
        ("tests/test_train.py::test_resume_is_bit_exact",),
        "in the second of two invocations (a resumed run) the images are not binarized",
    ),
    # --- equivalent: listed so that nobody spends time on them
    M(
        "tanh-as-torch-tanh",
        "src/iwae/models/networks.py",
        "y = torch.sigmoid(h * 2.0).mul_(2.0).sub_(1.0)",
        "y = torch.tanh(h)",
        (),
        "",
        equivalent="2 sigmoid(2h) - 1 is tanh(h) (to 2e-7 in float32); the sigmoid form is only faster on CPU",
    ),
    M(
        "cpu-rows-per-call",
        "src/iwae/memory.py",
        "CPU_ROWS_PER_CALL = 2500",
        "CPU_ROWS_PER_CALL = 2000",
        (),
        "",
        equivalent="only regroups the samples of L_k into other chunks: the same estimator, other random numbers, "
        "a speed setting (see benchmarks/)",
    ),
]


# ----------------------------------------------------------------------------- running
def _pytest(copy: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """(``passed`` / ``failed`` / ``timeout``, the first failing test or error line, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(copy / "src"), OMP_NUM_THREADS="1")
    env.setdefault("IWAE_TEST_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if proc.returncode == 0:
        return "passed", "", seconds
    out = proc.stdout + proc.stderr
    first = re.search(r"^(FAILED|ERROR) (\S+)", out, re.M)
    detail = first.group(2) if first else (out.strip().splitlines() or [f"pytest exit {proc.returncode}"])[-1]
    if proc.returncode not in (1,):  # 2-5: usage error, no tests collected, internal error
        detail = f"pytest exit {proc.returncode}: {detail}"
    return "failed", detail, seconds


def _check_entry(copy: Path, m: Mutation) -> str | None:
    """None if ``m.old`` occurs exactly once in its file, else why the entry drifted."""
    path = copy / m.file
    if not path.is_file():
        return f"{m.file} not found"
    count = path.read_text().count(m.old)
    if count != 1:
        return f"old text {m.old!r} occurs {count} times in {m.file} (expected once): update the entry"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this mutation (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "two mutations share a name"
    unknown = [n for n in args.only if n not in names]
    if unknown:
        print(f"error: unknown mutation {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in selected:
            tag = f"EQUIVALENT: {m.equivalent}" if m.equivalent else m.why
            print(f"{m.name}\n    {m.file}: {m.old!r} -> {m.new!r}\n    {tag}\n    tests: {' '.join(m.tests)}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="iwae-mutants-"))
    copy = tmp / ROOT.name
    try:
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        drifted = [(m, why) for m in selected if (why := _check_entry(copy, m))]
        for m, why in drifted:
            print(f"DRIFTED   {m.name}: {why}", flush=True)
        runnable = [m for m in selected if not m.equivalent and m not in [d for d, _ in drifted]]
        tests = sorted({t for m in runnable for t in m.tests})
        env = dict(os.environ, PYTHONPATH=str(copy / "src"))
        where = subprocess.run(
            [sys.executable, "-c", "import iwae; print(iwae.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"error: the tests would import iwae from {where or '(nowhere)'}, not from the copy", file=sys.stderr)
            return 2
        status, detail, seconds = _pytest(copy, tests, args.timeout * 2)
        print(f"baseline  {len(tests)} selected tests on the unchanged copy: {status} ({seconds:.0f} s)", flush=True)
        if status != "passed":
            print(f"error: the selected tests fail without any mutation ({detail}); fix them first", file=sys.stderr)
            return 2
        survived, t_start = [], time.perf_counter()
        for m in selected:
            if m.equivalent:
                print(f"EQUIVALENT {m.name}: {m.equivalent}", flush=True)
                continue
            if any(m is d for d, _ in drifted):
                continue
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            try:
                status, detail, seconds = _pytest(copy, list(m.tests), args.timeout)
            finally:
                path.write_text(original)
            if status == "passed":
                survived.append(m)
                print(
                    f"SURVIVED  {m.name} ({seconds:.0f} s): {m.why}; tests {' '.join(m.tests)} still pass", flush=True
                )
            else:
                print(f"killed    {m.name} ({seconds:.0f} s) by {detail}", flush=True)
        ran = len(runnable)
        print(
            f"\n{ran - len(survived)} of {ran} mutations killed, {len(survived)} survived, {len(drifted)} drifted, "
            f"{sum(1 for m in selected if m.equivalent)} equivalent; {time.perf_counter() - t_start:.0f} s"
        )
        if drifted:
            return 2
        return 1 if survived else 0
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
