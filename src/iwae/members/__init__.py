"""Many runs as one batched model: runs that share shapes train together, each the run it would be alone.

    from iwae.members import train_members
    from iwae.train import TrainConfig
    configs = [TrainConfig(objective="iwae", k=5, epochs=3, seed=s, out=f"runs/x/seed{s}") for s in range(4)]
    results = train_members(configs)   # one MemberResult per config: its run folder, or the error that stopped it

``iwae train --seeds 0,1,2,3 --out runs/x`` is this call with the members in ``runs/x/seed0`` ... and
``iwae reproduce`` groups the compatible runs of an experiment this way. Whether they are stacked or
trained one after another is decided per device by a measured rule (:func:`batch_by_default`: on the
CPU, where it measured 1.9-2.4x faster, and on CUDA, yes); ``batch=True`` / ``False``
(``--batch`` / ``--no-batch``) overrides it.

The members' weights are stacked on a leading dimension M and every layer computes all members'
matrix products in one batched call (``torch.bmm`` / ``baddbmm`` on (M, rows, in) x (M, in, out)).
Members are independent, so the gradient of the *sum* of the members' losses with respect to the
stacked weights is, slice by slice, each member's own gradient; Adam is elementwise, so one Adam over
the stacked weights is M Adams when they share lr, betas and eps (and the step count). The
estimators are not rewritten: members with the same objective, estimator and KL weight are laid side
by side along the batch dimension, log w of shape (K, M_g * B), and handed to
:func:`iwae.estimators.gradient_terms` once; every objective reduces over the samples only, so the
per-example surrogates of one member depend on that member's samples alone.

Each member keeps what makes it its run: its own ``torch.Generator`` seeded as the single run's,
drawing in the single run's order (the epoch's ``randperm``, each batch's dynamic binarization, then
eps of layer 1, 2, ...; the validation samples after each epoch), its initialisation (the global
seed, then ``build_model``, as :func:`iwae.train.train`), its objective, estimator, beta, m and KL
warm-up, its slice of Adam's state, and its run folder, written through :mod:`iwae.rundir` as a
single run writes it, so ``iwae train --resume`` of one member alone continues it. A member whose
loss or gradient turns nan or inf is stopped before its parameters take that step (its last
checkpoint is intact, as for a single run) and leaves the group; the others go on.

Members must share everything that shapes the parameters or the step (see :data:`MAY_DIFFER`):
architecture, prior, data, train subset, batch size, schedule, epochs, learning rate and Adam's
settings, device, and the total number of samples k (so MIWAE and PIWAE at the same M*K group
with IWAE at that k). Models this module cannot stack (the hvae model, another prior than the standard
Normal, another network or likelihood than the Bernoulli tanh MLP) are trained one after another by
:func:`iwae.train.train`: the same runs, without the speed.

The package: :mod:`.group` (which runs may stack), :mod:`.stacked` (the stacked model), :mod:`.loop`
(the loop, :func:`train_members`).
"""

from .group import BATCH_BY_DEFAULT, MAY_DIFFER, MemberResult, batch_by_default, check_group, group_key, stackable
from .loop import train_members
from .stacked import StackedVAE

__all__ = [
    "train_members",
    "MemberResult",
    "check_group",
    "group_key",
    "stackable",
    "batch_by_default",
    "BATCH_BY_DEFAULT",
    "MAY_DIFFER",
    "StackedVAE",
]
