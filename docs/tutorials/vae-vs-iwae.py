# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial: a VAE against an IWAE
#
# We train two small models on MNIST that differ only in their objective, the ELBO with k = 5
# samples (a VAE) and the IWAE bound L_5, measure both on the same test images, and ask whether
# the difference is real with a **paired standard error**. Then we look at what IWAE's importance
# weights do to the posterior (**q_EW**) and at samples from both models.
#
# Everything is small enough to run on a laptop CPU in a minute or two (2 epochs on the first
# 5,000 training images, evaluation by L_1000 on the first 500 test images) and is written under
# `runs/` in the folder it runs in. The papers' numbers need the full protocol
# ([Results](../results/index.md)). MNIST is read from `$IWAE_DATA_DIR`, else the cache
# `~/.cache/iwae`, else downloaded once.

# %%
import warnings

import torch
from IPython.display import Image, display

import iwae
from iwae.compare import compare_runs, compare_text
from iwae.evaluate import evaluate
from iwae.train import TrainConfig, train

torch.set_num_threads(1)  # tiny models: one thread is as fast, and kind to a shared machine
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook without ipywidgets

# %% [markdown]
# ## Two models that differ only in their objective
#
# A `TrainConfig` holds every setting of a run (the CLI's `iwae train` has one flag per field).
# Both runs use the same seed, so they start from the same weights and see the same minibatches.

# %%
common = dict(k=5, epochs=2, train_subset=5000, seed=0)
runs = {}
for objective in ("vae", "iwae"):
    config = TrainConfig(objective=objective, out=f"runs/tutorial-{objective}-k5", **common)
    runs[objective] = train(config, overwrite=True, progress=False)
    print(objective, "->", runs[objective])

# %% [markdown]
# Each run folder holds its settings, weights, a resumable checkpoint and per-epoch metrics:

# %%
print(sorted(p.name for p in runs["iwae"].iterdir()))
print((runs["iwae"] / "metrics.csv").read_text())

# %% [markdown]
# ## Test NLL by L_k, on the same images
#
# `evaluate` computes L_k = log (1/k) Σ_i w_i for each test image, in log space and in chunks, and
# reports the test NLL = −mean L_k with its standard error over images, and the active units.
# It also saves each image's L_k beside the JSON: that is what makes a paired comparison possible.

# %%
results = {name: evaluate(run_dir, k=1000, test_subset=500, progress=False) for name, run_dir in runs.items()}
for name, r in results.items():
    print(f"{name:5} NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f} nats, {r['active_units']} active units")

# %% [markdown]
# ## Is the difference real? A paired standard error
#
# The two standard errors above measure mostly how much the *images* differ from one another, and
# they are large. Both models were measured on the same 500 images, so we can look at the
# per-image differences d_n = NLL_A(x_n) − NLL_B(x_n) instead: their standard error std(d)/√N
# cancels the images' own spread.

# %%
comparison = compare_runs(runs["iwae"], runs["vae"], k=1000, test_subset=500)
print(compare_text(comparison))
print(f"paired s.e. {comparison['paired_stderr']:.3f} against unpaired {comparison['unpaired_stderr']:.3f}")

# %% [markdown]
# The paired standard error is far smaller than the unpaired one, so a difference that the two
# error bars above could not tell apart is resolved. After 2 epochs on 5,000 images the ranking
# says nothing about the objectives at convergence ([Results](../results/table1.md) has the
# 13-epoch runs); the point here is the method.
#
# The same from the shell: `iwae compare runs/tutorial-iwae-k5 runs/tutorial-vae-k5 --k 1000
# --test-subset 500`. With one run per seed on each side (`RUN_A1,RUN_A2 RUN_B1,RUN_B2`) it also
# gives the standard error across seeds, which includes the run-to-run noise.

# %% [markdown]
# ## IWAE's implicit posterior q_EW
#
# IWAE draws k samples from q(z|x) and weights them by w_i = p(x, z_i) / q(z_i|x). Resampling one of
# them in proportion to its weight draws from an implicit distribution q_EW, which approaches the
# true posterior p(z|x) as k grows. With a 2-D latent we can see it: p(z|x) is computed on a grid,
# and the figure's titles give the total-variation distance of q and of q_EW to it.

# %%
config_2d = TrainConfig(
    objective="iwae", k=5, epochs=2, train_subset=5000, latent_dims=[2], out="runs/tutorial-iwae-2d"
)
model_2d = iwae.load(train(config_2d, overwrite=True, progress=False))
x = iwae.load_dataset("mnist").test[:2]
rows = iwae.figures.qew_figure(model_2d, x, (1, 5, 50), "runs/tutorial-qew.png", samples=5000, grid_size=81)
for row in rows:  # the total-variation distance of q_EW and of q to p(z|x), per image and k
    print(f"image {row['image']}  k = {row['k']:2}  TV(q_EW, p) = {row['tv_qew']:.3f}  TV(q, p) = {row['tv_q']:.3f}")
display(Image("runs/tutorial-qew.png"))

# %% [markdown]
# Draws from q_EW themselves, for the 50-D model, come from `iwae.analysis.sample_qew`:

# %%
from iwae.analysis import sample_qew

model = iwae.load(runs["iwae"])
z = sample_qew(model, x, k=50, n=1000)
print(z.shape, "mean of the first two units:", z.mean(0)[:, :2])

# %% [markdown]
# ## Samples
#
# Means of p(x|z) for z drawn from the prior, from each model:

# %%
models = {"VAE (k=5)": iwae.load(runs["vae"]), "IWAE (k=5)": model}
iwae.figures.plot_samples(models, "runs/tutorial-samples.png", n=36)
display(Image("runs/tutorial-samples.png"))

# %% [markdown]
# ## Where next
#
# - [Evaluation](../guide/evaluation.md): AIS and BDMC, which measure how far L_5000 lies from
#   log p(x).
# - [Experiments](../guide/experiments.md): the papers' tables as experiment files, with reports.
# - [Objectives and estimators](../guide/objectives.md): MIWAE, CIWAE, PIWAE and the DReG and STL
#   gradients.
