"""Tests that pin the papers' protocol: each checks one promise of the README against a number
stated by the paper (Burda et al. 2016; Rainforth et al. 2018; Tomczak & Welling 2018), a hand
computation, or a measurement, never against a second run of the function under test.

Each test here kills at least one named mutation of ``scripts/mutation_check.py``; the docstring of
each test says which promise it pins. Runs are tiny (a 784-16-2 model, 20 training images, one
epoch) so that the file takes seconds.
"""

from __future__ import annotations

import csv
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iwae import data as data_module
from iwae import evaluate as evaluate_module
from iwae import memory as memory_module
from iwae.analysis import sample_images
from iwae.checkpoint import load_tensors, save_tensors
from iwae.data import Splits
from iwae.estimators import ObjectiveSpec, gradient_terms
from iwae.grid import Run, canonical_run, grid_points, read_grid_csv, run_grid
from iwae.models import VAE, ModelConfig
from iwae.models.networks import GaussianMLP, Tanh
from iwae.train import TrainConfig, kl_weight, load, train

# Burda et al. (2016), Sec. 5 / Appendix: Adam with beta1 = 0.9, beta2 = 0.999, eps = 1e-4
BURDA_BETAS = (0.9, 0.999)
BURDA_EPS = 1e-4
# Burda et al. (2016), Sec. 5.2: a unit is active if Var_x(E_q[u | x]) > 10^-2
BURDA_ACTIVITY_THRESHOLD = 1e-2
TINY_MODEL = dict(layers=1, latent_dims=[2], hidden_dims=[[16]])


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def splits(mnist_splits) -> Splits:
    """Real MNIST, cut down: 500 grey-level training images, 50 validation, 20 test images."""
    s = mnist_splits
    return Splits("mnist", s.train[:500].clone(), s.valid[:50].clone(), s.test[:20].clone(), True)


def tiny_train(out: Path, splits: Splits, **overrides) -> Path:
    """One epoch of one step (20 images, batch 20) of a 784-16-2 model; ``lr`` 1e-9 by default, so
    the parameters end (to 1e-9) where training started them."""
    settings = dict(
        TINY_MODEL,
        objective="vae",
        k=1,
        schedule="constant",
        lr=1e-9,
        epochs=1,
        train_subset=20,
        batch_size=20,
        out=str(out),
    )
    settings.update(overrides)
    return train(TrainConfig(**settings), splits=splits, progress=False)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- Adam (Burda et al.)
def test_training_uses_burdas_adam_settings(tmp_path, splits):
    """Adam's settings are Burda et al.'s: beta1 0.9, beta2 0.999, eps 1e-4 (not PyTorch's 1e-8),
    as the optimiser state saved in the checkpoint records them."""
    config = TrainConfig()
    assert (config.beta1, config.beta2, config.adam_eps) == (*BURDA_BETAS, BURDA_EPS)
    run = tiny_train(tmp_path / "run", splits)
    _, meta = load_tensors(run / "checkpoint.safetensors")
    (group,) = meta["param_groups"]
    assert tuple(group["betas"]) == BURDA_BETAS
    assert group["eps"] == BURDA_EPS


def test_adam_step_matches_the_hand_computed_update(tmp_path, splits):
    """The first Adam step moves each parameter by lr * g / (|g| + eps) (bias-corrected m and v are
    g and g^2 after one step), so eps = 1e-4 shows where |g| is small: computed here by hand from
    the gradient of the first step, at lr 1e-3."""
    captured = {}
    original = VAE.log_weight_parts

    def recording(self, x, num_samples, *args, **kwargs):  # the training step's inputs, once
        if "x" not in captured:
            generator = args[0] if args else kwargs["generator"]
            captured.update(
                x=x.clone(),
                generator=generator.get_state(),
                params={n: t.detach().clone() for n, t in self.state_dict().items()},
            )
        return original(self, x, num_samples, *args, **kwargs)

    VAE.log_weight_parts = recording
    try:
        run = tiny_train(tmp_path / "run", splits, lr=1e-3, objective="iwae", k=1)
    finally:
        VAE.log_weight_parts = original
    after = load(run)
    # the gradient of the summed one-sample bound at the parameters the step started from, with
    # the same random numbers (the generator's state when the step sampled)
    before = VAE(after.config)
    before.load_state_dict(captured["params"])
    g = torch.Generator()
    g.set_state(captured["generator"])
    lw = before.log_weights(captured["x"], 1, g)  # (1, 20)
    before.zero_grad()
    (-lw.sum()).backward()
    for name, p in before.named_parameters():
        grad = p.grad
        expected = captured["params"][name] - 1e-3 * grad / (grad.abs() + BURDA_EPS)
        torch.testing.assert_close(
            dict(after.named_parameters())[name].detach(),
            expected,
            rtol=0,
            atol=2e-6,
            msg=lambda m, name=name: f"{name}: {m}",
        )


# ----------------------------------------------------------------------------- initialisation
def test_output_bias_starts_at_logit_of_the_mean_training_pixel(tmp_path, splits):
    """Burda et al.'s code sets p(x|z)'s output bias to logit(mean training pixel) (clipped to
    [1e-3, 1 - 1e-3]); computed here from the 20 training images the run uses."""
    model = load(tiny_train(tmp_path / "run", splits))
    p = splits.train[:20].double().mean(0).clamp(1e-3, 1 - 1e-3)
    expected = (torch.log(p) - torch.log1p(-p)).float()
    torch.testing.assert_close(model.decoder[0].head.bias.detach(), expected, rtol=0, atol=1e-5)


def test_vamp_pseudo_inputs_start_at_training_images(tmp_path, splits):
    """Tomczak & Welling initialise the pseudo-inputs from training images (plus small noise): each
    u_c lies within the noise of one of the 20 training images, and they are not all the same."""
    model = load(tiny_train(tmp_path / "run", splits, prior="vamp", components=6))
    u = model.prior_module.pseudo_inputs.detach().double()  # (6, 784)
    x = splits.train[:20].double()
    distance = (u[:, None, :] - x[None, :, :]).abs()  # (6, 20, 784)
    mean_abs = distance.mean(-1)  # (6, 20)
    nearest = mean_abs.argmin(1)
    # N(0, 0.05^2) noise, clipped to [0.01, 0.99]: mean |noise| about 0.04, never near 0.5
    assert mean_abs.min(1).values.max() < 0.06, mean_abs.min(1).values
    assert distance[torch.arange(6), nearest].max() < 0.35
    assert len(set(nearest.tolist())) > 1  # random images, not one image six times
    # a pseudo-input at ~0.5 everywhere (never initialised) is ~0.4 from every image
    assert (torch.full((784,), 0.5, dtype=torch.float64) - x).abs().mean(-1).min() > 0.3


# ----------------------------------------------------------------------------- validation bound
def _crafted_run(path: Path, scale: float = 6.0) -> VAE:
    """A run directory holding a 784-16-2 model whose decoder depends strongly on z (its output
    weights scaled up), so that L_k lies several nats above the ELBO."""
    torch.manual_seed(0)
    model = VAE(TrainConfig(**TINY_MODEL).model_config(784)).eval()
    with torch.no_grad():
        model.decoder[0].head.weight.mul_(scale)
        model.decoder[0].head.bias.fill_(-2.0)
    path.mkdir(parents=True)
    save_tensors(path / "model.safetensors", model.state_dict(), {"model_config": model.config.to_dict(), "epoch": 0})
    return model


def test_validation_column_is_the_iwae_bound_L_k(tmp_path, splits):
    """metrics.csv's validation column is the mean over validation images of L_k = log (1/k)
    sum_i w_i (Burda et al.'s bound), not the ELBO: the logsumexp is computed here from
    ``model.log_weights`` of a model whose L_50 is ~5 nats above its ELBO."""
    model = _crafted_run(tmp_path / "crafted")
    run = tiny_train(tmp_path / "run", splits, init_from=str(tmp_path / "crafted"), valid_k=50)
    (row,) = read_metrics(run)
    reported = float(row["valid_L50"])
    x = splits.valid
    lk, elbo = [], []
    with torch.no_grad():
        for seed in range(4):
            lw = model.log_weights(x, 50, torch.Generator().manual_seed(100 + seed))  # (50, N)
            lk.append((torch.logsumexp(lw.double(), 0) - math.log(50)).mean().item())
            elbo.append(lw.double().mean().item())
    lk_mean, elbo_mean = float(np.mean(lk)), float(np.mean(elbo))
    assert lk_mean - elbo_mean > 3.0  # the check below can tell the two apart
    spread = float(np.std(lk))  # Monte Carlo spread of one estimate, ~0.05 nats
    assert abs(reported - lk_mean) < max(0.5, 8 * spread), (reported, lk_mean, elbo_mean)


# ----------------------------------------------------------------------------- KL warm-up
def test_kl_weight_rises_linearly_from_zero_to_one():
    """KL warm-up: in 0-based epoch e the weight is min(1, e / T), hand-listed for T = 4."""
    config = TrainConfig(objective="vae", kl_warmup=4)
    assert [kl_weight(config, e) for e in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(TrainConfig(objective="vae"), 0) == 1.0


def test_kl_weight_scales_the_encoder_gradient_of_log_p_z_minus_log_q():
    """With weight beta the surrogate is E[log p(x|z)] + beta E[log p(z) - log q(z|x)]: its gradient
    is computed here by hand from the parts of the log-weights."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (2,), ((16,),)))
    x = torch.bernoulli(torch.full((6, 784), 0.3), generator=torch.Generator().manual_seed(1))
    spec = ObjectiveSpec("vae", 3)
    for beta in (0.0, 0.3):
        parts = model.log_weight_parts(x, 3, torch.Generator().manual_seed(2))
        terms = gradient_terms(model, parts, spec, kl_weight=beta)
        model.zero_grad()
        sum(-s.sum() for s, _ in terms.terms).backward()
        got = [p.grad.clone() for p in model.parameters()]
        parts = model.log_weight_parts(x, 3, torch.Generator().manual_seed(2))
        lik = parts.log_likelihood
        by_hand = (lik + beta * (parts.log_p - lik - parts.log_q)).mean(0).sum()
        model.zero_grad()
        (-by_hand).backward()
        for a, p in zip(got, model.parameters()):
            torch.testing.assert_close(a, p.grad)
        # the reported bound stays the ELBO whatever the weight
        torch.testing.assert_close(terms.bound, parts.log_weights.mean(0).detach())


def test_training_with_warmup_changes_the_first_epochs_encoder_update(tmp_path, splits):
    """End to end: with kl_warmup the first epoch trains at weight 0, so the encoder ends elsewhere
    than without warm-up, while the decoder (whose gradient has no KL term) ends at the same point."""
    common = dict(lr=1e-2, seed=3)
    plain = load(tiny_train(tmp_path / "plain", splits, **common))
    warm = load(tiny_train(tmp_path / "warm", splits, kl_warmup=100, **common))
    enc = [(a - b).abs().max().item() for a, b in zip(plain.encoder.parameters(), warm.encoder.parameters())]
    assert max(enc) > 1e-4, enc
    for a, b in zip(plain.decoder.parameters(), warm.decoder.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- active units
def _model_with_unit_variances(targets: list[float], x: torch.Tensor) -> VAE:
    """A 784-16-len(targets) model whose encoder means have exactly these variances over ``x``."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (len(targets),), ((16,),))).eval()
    with torch.no_grad():
        var = model.encode(x).mean.double().var(0, unbiased=False)
        scale = (torch.tensor(targets, dtype=torch.float64) / var).sqrt().float()
        model.encoder[0].head.weight[: len(targets)] *= scale[:, None]  # Var(a * loc) = a^2 Var(loc)
    return model


def test_active_units_use_burdas_threshold_on_binarized_training_images(splits):
    """Active units (Burda et al., Sec. 5.2): A_u = Var_x(E_q[u | x]) over the first 500 training
    images, binarized (the images the model sees), active if A_u > 0.01. The variances are computed
    here with numpy from ``model.encode``; the targets straddle 0.01 and 0.05."""
    xb = torch.from_numpy(data_module.fixed_binarization(splits.train[:500].numpy(), evaluate_module.ACTIVE_UNITS_SEED))
    targets = [0.002, 0.008, 0.02, 0.03, 0.04, 0.3]
    model = _model_with_unit_variances(targets, xb)
    with torch.no_grad():
        mean = model.encode(xb).mean.double().numpy()
    by_hand = mean.var(0)  # numpy: no Bessel correction
    np.testing.assert_allclose(by_hand, targets, rtol=1e-4)
    report = evaluate_module.evaluate(model=model, splits=splits, k=1, test_subset=2)
    np.testing.assert_allclose(report["unit_variances"][0], by_hand, rtol=1e-4)
    assert report["active_units"] == int((by_hand > BURDA_ACTIVITY_THRESHOLD).sum()) == 4
    # grey levels would give other variances: the binarized images are what the test pins
    with torch.no_grad():
        grey = model.encode(splits.train[:500]).mean.double().var(0, unbiased=False).numpy()
    assert np.abs(grey / by_hand - 1).max() > 1e-2


# ----------------------------------------------------------------------------- the memory budget
class _PeakMemory(TorchDispatchMode):
    """Measures the peak bytes of tensor storage alive at once, over every aten op run inside it
    (a storage counts from the op that creates it until its last tensor is garbage collected);
    the storages of ``existing`` tensors (weights, inputs) and views of them do not count."""

    def __init__(self, existing=()) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.now = self.peak = 0
        self.existing = {t.untyped_storage().data_ptr() for t in existing}

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if key in self.existing:
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.now += nbytes
                    self.peak = max(self.peak, self.now)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key, nbytes)
        return out


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig.burda(1),
        ModelConfig.burda(2),
        # the prior's (rows, C, D) temporaries: 12.5 kB a row at C = 30, measured; 41 kB at C = 100
        ModelConfig(784, (50,), ((200, 200),), "mog", 30),
        ModelConfig(784, (50,), ((200, 200),), "vamp", 30),
        ModelConfig(784, (50,), ((200, 200),), "vamp", 100),
    ],
    ids=["1layer", "2layer", "mog30", "vamp30", "vamp100"],
)
def test_log_likelihood_stays_within_its_memory_budget(config):
    """The evaluation's promise: no more than ``memory_budget`` bytes alive at once, of which the tensors'
    share on the CPU is ``memory_budget / CPU_HEAP_FACTOR``, measured here op by op (the budget is 2 MiB,
    so 1,000 samples of 4 images go in chunks).
    Measured per sample row: 6.7 kB (1 layer), 7.9 kB (2 layers), 12.5 kB (30 prior components)."""
    torch.manual_seed(0)
    model = VAE(config).eval()
    x = torch.bernoulli(torch.full((4, 784), 0.3), generator=torch.Generator().manual_seed(0))
    budget = 2 << 20
    meter = _PeakMemory(existing=[*model.parameters(), *model.buffers(), x])
    with meter:
        ll = evaluate_module.log_likelihood(model, x, 1000, memory_budget=budget)
    assert ll.shape == (4,) and torch.isfinite(ll).all()
    # on the CPU the tensors get 1 / CPU_HEAP_FACTOR of the budget (the rest is the C heap's slack, see
    # iwae.memory); they use at least a fifth of that share (a much smaller estimate would waste it)
    share = budget / memory_module.CPU_HEAP_FACTOR
    assert share / 5 < meter.peak <= share, (meter.peak, share)


# ----------------------------------------------------------------------------- the (M, K) grid
def _miwae_by_hand(log_w: list[float], m: int) -> float:
    """Rainforth et al.'s MIWAE(M, K) = (1/M) sum_m log (1/K) sum_k w_{m,k}, groups of consecutive samples."""
    k = len(log_w) // m
    return sum(math.log(sum(math.exp(v) for v in log_w[g * k : (g + 1) * k]) / k) for g in range(m)) / m


def test_grid_point_m_k_means_m_groups_of_k_samples():
    """MIWAE(2, 32) is 2 groups of 32 samples: its run trains on the bound of that name, computed
    here by hand on log-weights with one large weight (MIWAE(32, 2) would give another value)."""
    point = grid_points(64, betas=[], ms=[2])[0]
    assert (point.objective, point.m, point.k, point.label) == ("miwae", 2, 32, "MIWAE(2,32)")
    run = canonical_run(point)
    assert run == Run("miwae", 64, m=2) and run.name == "miwae-m2-k32"
    spec = run.config(out="unused").spec
    log_w = [0.0] * 64
    log_w[5] = 12.0
    bound = gradient_terms(torch.nn.Linear(1, 1), torch.tensor(log_w)[:, None], spec).bound.item()
    assert bound == pytest.approx(_miwae_by_hand(log_w, 2), abs=1e-4)
    assert abs(bound - _miwae_by_hand(log_w, 32)) > 1.0
    assert [p.label for p in grid_points(64, betas=[], ms=[8, 32], objectives=("piwae",))] == [
        "PIWAE(8,8)",
        "PIWAE(32,2)",
    ]


def test_grid_rows_and_runs_keep_m_and_k(tmp_path, mnist_splits):
    """End to end on an asymmetric point, MIWAE(2, 3) at M * K = 6: grid.csv's row and the run's
    config.yaml both say 2 groups of 3 samples."""
    s = mnist_splits
    tiny = Splits("mnist", s.train[:20].clone(), s.valid[:5].clone(), s.test[:5].clone(), True)
    run_grid(
        tmp_path,
        total=6,
        ms=[2],
        betas=[],
        epochs=1,
        train_subset=20,
        test_subset=2,
        log_p_k=6,
        splits=tiny,
        progress=False,
        plot=False,
    )
    rows = {r["label"]: r for r in read_grid_csv(tmp_path / "grid.csv")}
    assert sorted(rows) == ["MIWAE(2,3)", "PIWAE(2,3)"]
    for label, objective in (("MIWAE(2,3)", "miwae"), ("PIWAE(2,3)", "piwae")):
        r = rows[label]
        assert (r["m"], r["k"], r["total"], r["run"]) == (2, 3, 6, f"{objective}-m2-k3")
        config = yaml.safe_load((tmp_path / "runs" / r["run"] / "config.yaml").read_text())
        assert (config["objective"], config["k"], config["m"]) == (objective, 6, 2)


# ----------------------------------------------------------------------------- networks and samples
def test_tanh_is_tanh():
    """Burda et al.'s hidden units are tanh: compared with math.tanh (and not, e.g., softsign)."""
    h = torch.tensor([-6.0, -2.0, -0.7, -0.1, 0.0, 0.05, 0.5, 1.0, 3.0, 8.0])
    expected = torch.tensor([math.tanh(v) for v in h.tolist()])
    torch.testing.assert_close(Tanh()(h), expected, rtol=0, atol=3e-7)


def test_gaussian_mlp_is_the_papers_tanh_network():
    """A GaussianMLP layer computes loc = W_2 tanh(W_1 h + b_1) + b_2, log sigma likewise: written
    here in numpy from its weights."""
    torch.manual_seed(0)
    net = GaussianMLP(5, [7, 4], 3)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.8)
    h = torch.randn(6, 5)
    w = [p.detach().double().numpy() for p in net.parameters()]  # W1, b1, W2, b2, head W, head b
    a = np.tanh(h.double().numpy() @ w[0].T + w[1])
    a = np.tanh(a @ w[2].T + w[3])
    out = a @ w[4].T + w[5]
    loc, log_scale = net.loc_log_scale(h)
    np.testing.assert_allclose(loc.detach().numpy(), out[:, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_scale.detach().numpy(), out[:, 3:], rtol=1e-5, atol=1e-5)


def test_two_layer_samples_go_through_p_z1_given_z2():
    """Ancestral sampling of a 2-layer model: z_2 ~ p(z_2), z_1 ~ p(z_1 | z_2), x ~ p(x | z_1). With
    p(z_1 | z_2) = N(c(z_2), 0.001^2), c a known function of z_2, the Bernoulli means must be
    those of p(x | z_1 = c(z_2)), computed here for the same z_2 draws."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (3, 2), ((8,), (8,))))
    top = model.decoder[1]  # p(z_1 | z_2)
    with torch.no_grad():
        top.head.weight.zero_()
        top.head.bias[:3] = torch.tensor([2.5, -1.5, 3.0])  # loc
        top.head.bias[3:] = math.log(1e-3)  # sigma
    means = sample_images(model, n=16, seed=4)
    with torch.no_grad():
        z1 = torch.tensor([2.5, -1.5, 3.0]).expand(16, 3)
        expected = torch.sigmoid(model.decoder[0].logits(z1))
        torch.testing.assert_close(means, expected, rtol=0, atol=2e-3)
        # and far from what z_1 ~ N(0, I) or z_1 = 0 would give
        assert (means - torch.sigmoid(model.decoder[0].logits(torch.zeros(16, 3)))).abs().max() > 0.05


def test_three_layer_samples_go_top_down():
    """With 3 layers of distinct sizes the chain runs z_3 -> z_2 -> z_1 -> x: each p(z_l | z_{l+1})
    is pinned to a constant mean, so x's means are those of p(x | z_1 = c_1)."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (4, 3, 2), ((8,), (8,), (8,))))
    for layer, dim in zip(model.decoder[1:], (4, 3)):
        with torch.no_grad():
            layer.head.weight.zero_()
            layer.head.bias[:dim] = torch.linspace(-2.0, 2.0, dim)
            layer.head.bias[dim:] = math.log(1e-3)
    means = sample_images(model, n=8, seed=1)
    with torch.no_grad():
        expected = torch.sigmoid(model.decoder[0].logits(torch.linspace(-2.0, 2.0, 4).expand(8, 4)))
    torch.testing.assert_close(means, expected, rtol=0, atol=2e-3)


# ----------------------------------------------------------------------------- dynamic binarization
def test_every_training_batch_is_a_fresh_binarization(tmp_path, splits):
    """Dynamic binarization (Burda et al.): each time an image is used it is a new Bernoulli sample
    of its grey levels. One image, 30 epochs: every batch is binary, 0 and 1 pixels stay so, the
    image changes from epoch to epoch, and its mean over the epochs follows the grey levels."""
    seen: list[torch.Tensor] = []
    original = VAE.log_weight_parts

    def recording(self, x, *args, **kwargs):
        if self.training:
            seen.append(x.detach().clone())
        return original(self, x, *args, **kwargs)

    VAE.log_weight_parts = recording
    try:
        tiny_train(tmp_path / "run", splits, epochs=30, train_subset=1, batch_size=1)
    finally:
        VAE.log_weight_parts = original
    assert len(seen) == 30  # one batch of one image per epoch
    grey = splits.train[0]
    batches = torch.cat(seen)  # (30, 784)
    assert set(batches.unique().tolist()) <= {0.0, 1.0}
    assert (batches[:, grey == 0] == 0).all() and (batches[:, grey == 1] == 1).all()
    mid = (grey > 0.2) & (grey < 0.8)
    assert mid.sum() > 20
    # every pair of consecutive epochs differs on a good share of the mid-grey pixels
    flips = (batches[1:] != batches[:-1])[:, mid].float().mean(1)
    assert flips.min() > 0.15, flips
    # the mean of 30 Bernoulli(p) draws is within ~0.09 of p; averaged over the pixels, far closer
    assert (batches.mean(0) - grey)[mid].abs().mean() < 0.12
