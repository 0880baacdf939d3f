"""The parts TRPO's update is built from (marsdiff.rl.conjugate_gradient, fisher_vector_product,
line_search, trpo's gradient pass) and the products the update saves: CG's quadratic form from
its recursion instead of one more product, F g reused as CG's first product, the gradient pass's
forward reused as the FVP's kept graph, and the line search's exact early rejection. Each saving
is checked against the explicit quantity it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marsdiff.rl.actions import DenoiseActions
from marsdiff.rl.conjugate_gradient import conjugate_gradient
from marsdiff.rl.kl_families import DenoiseKL
from marsdiff.rl import trpo as trpo_module
from marsdiff.rl.line_search import backtracking_line_search, evaluate_surrogate_and_kl, next_order, regroup_by_sigma
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.trpo import FisherVectorProduct, leading_actions, trpo_update
from rl_helpers import trpo_settings
from test_rl_trpo import LinearGaussianSteps, experiment, flat, perturb_lora_b, relative, sample
from tiny_models import tiny_pixel_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spd_matrix(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    return q @ q.T / n + 0.05 * torch.eye(n, dtype=torch.float64)


def test_cg_quadratic_form_and_reused_first_product_match_explicit_algebra():
    a = spd_matrix(12, 0)
    b = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []

    def a_times(v):
        calls.append(v)
        return a @ v

    for iterations in (1, 4, 40):
        calls.clear()
        plain = conjugate_gradient(a_times, b, iterations, 1e-30)
        plain_calls = len(calls)
        calls.clear()
        reused = conjugate_gradient(a_times, b, iterations, 1e-30, a_times_b=a @ b)
        # Same iterates bit for bit; one product fewer; the budget still counts it.
        assert torch.equal(plain.x, reused.x) and reused.products == plain.products
        assert len(calls) == plain_calls - 1
        # x^T A x from the recursion equals the explicit quadratic form (12x12: rounding only).
        explicit = float(plain.x @ a @ plain.x)
        assert plain.x_a_x == pytest.approx(explicit, rel=1e-10)
        assert plain.residual_norm == pytest.approx(float((b - a @ plain.x).norm()), rel=1e-6, abs=1e-12)
    assert relative(plain.x, torch.linalg.solve(a, b)) < 1e-10


def test_fvp_products_are_cg_iterations_no_extra_product():
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    for cg in (1, 3, 10):
        row = trpo_update(actions, params, trpo_settings(cg_iterations=cg, cg_tolerance=1e-300, fvp_subsample=12),
                          progress=False, kl_to_base=0.0)
        # F g (the damping's scale) is CG's first product; s^T F s comes from CG's recursion.
        assert row["cg_iterations"] == cg and row["fvp_products"] == cg


def test_leading_actions_are_the_first_rows_of_the_round_order():
    batches = [np.array([5, 2, 9]), np.array([1, 0, 7]), np.array([3])]
    assert leading_actions(batches, 3) is batches[0]  # the first minibatch itself: its graph can be reused
    assert leading_actions(batches, 2).tolist() == [5, 2]
    assert leading_actions(batches, 5).tolist() == [5, 2, 9, 1, 0]
    assert leading_actions(batches, 50).tolist() == [5, 2, 9, 1, 0, 7, 3]


@pytest.fixture(scope="module")
def tiny_round(tmp_path_factory):
    exp = experiment("lora_unet", images=4, steps=3)
    policy = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp)
    perturb_lora_b(policy.backend.unet)
    path = sample(policy, exp, 0, tmp_path_factory.mktemp("tiny_round"))
    return policy, path


def explicit_gauss_newton_fisher(actions, params, batch) -> torch.Tensor:
    """sum_r J_r^T J_r / (sigma_r^2 D n), J row by row with one backward per output dimension."""
    scored = actions.evaluate(batch)
    mean = scored.mean.flatten(1)
    n, dims = mean.shape
    rows = []
    for r in range(n):
        for d in range(dims):
            grads = torch.autograd.grad(mean[r, d], params, retain_graph=True, allow_unused=True)
            rows.append(flat([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
                        / (float(scored.std[r]) * math.sqrt(dims * n)))
    jacobian = torch.stack(rows)
    return jacobian.T @ jacobian


def test_gauss_newton_fvp_both_jacobian_vectors_and_the_reused_graph_match_the_explicit_fisher(tiny_round):
    policy, path = tiny_round
    actions = DenoiseActions(policy, path, np.zeros((4, 3)), 2, timestep_fraction=1.0, seed=0)
    params = policy.trainable_parameters()
    batch = next(actions.minibatches(0))
    fisher = explicit_gauss_newton_fisher(actions, params, batch)
    # The gradient pass: the surrogate's backward keeps the graph, its means are the FVP's (the
    # tiny UNet has mid-block attention: the SDPA graph takes the forward-mode J v only).
    scored = actions.evaluate(batch)
    torch.autograd.grad(scored.new_log_prob.mean(), params, retain_graph=True)
    reused = FisherVectorProduct(actions, params, batch, "gauss_newton", 8, 0.0, first_order_mean=(scored.mean, scored.std),
                                 jacobian_vector="forward")
    forward = FisherVectorProduct(actions, params, batch, "gauss_newton", 8, 0.0, jacobian_vector="forward")
    reverse = FisherVectorProduct(actions, params, batch, "gauss_newton", 8, 0.0, jacobian_vector="reverse")  # one chunk
    rebuilt = FisherVectorProduct(actions, params, batch, "gauss_newton", 1, 0.0, jacobian_vector="reverse")  # a chunk per row
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        v = torch.randn(fisher.shape[0], generator=g, dtype=torch.float64)
        for fvp in (reused, forward, reverse, rebuilt):
            assert relative(fvp(v), fisher @ v) < 1e-5  # float32 UNet against the explicit J^T J
        assert relative(reused(v), forward(v)) < 1e-12  # the same forward pass, so the same product
    actions.close()


def test_the_reused_gradient_graph_gives_the_explicit_natural_step_without_a_forward_pass(monkeypatch):
    """No attention in a linear model: the reverse J v runs on the gradient pass's own graph. The
    step is the one an explicit solve on the first minibatch's Fisher gives, and the FVP scores no
    action: before the line search, the round is scored once (3 minibatches), by the gradient pass."""
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    first = next(actions.minibatches(0))
    fisher = actions.explicit_fisher(first)
    scored = actions.evaluate(np.arange(actions.num_actions))
    g = flat(torch.autograd.grad((torch.exp(scored.new_log_prob - scored.old_log_prob) * scored.advantages).mean(), params))
    # 4 rows x 6 dims: F has rank 24 < 42 parameters; the relative damping makes the solve definite.
    damping = 0.01 * float(g @ fisher @ g) / float(g @ g)
    direction = torch.linalg.solve(fisher + damping * torch.eye(len(g), dtype=torch.float64), g)
    expected = direction * (2 * 0.001 / float(direction @ fisher @ direction)) ** 0.5
    calls = []
    original = actions.evaluate
    actions.evaluate = lambda rows: calls.append(len(rows)) or original(rows)
    before = flat(params)
    at_search = []

    def line_search(*args, **kwargs):
        at_search.append(len(calls))
        return backtracking_line_search(*args, **kwargs)

    monkeypatch.setattr(trpo_module, "backtracking_line_search", line_search)
    row = trpo_update(actions, params, trpo_settings(max_kl=0.001, cg_damping=0.01, cg_iterations=100, cg_tolerance=1e-28,
                                                     fvp_subsample=len(first)), progress=False, kl_to_base=0.0)
    assert row["accepted"] == 1.0 and row["fvp_actions"] == len(first)
    assert at_search == [3] and row["fvp_products"] >= 2
    assert relative(flat(params) - before, expected * row["step_fraction"]) < 1e-6


def test_line_search_pass_stops_only_where_the_round_kl_must_exceed_the_bound():
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    batches = list(actions.minibatches(0))
    olds = [DenoiseKL.snapshot(actions, b, actions.evaluate(b)) for b in batches]
    with torch.no_grad():
        params[1].add_(0.3)  # every mean moves: every action has KL > 0
    scored = []
    original = actions.evaluate

    def counting(rows):
        scored.append(len(rows))
        return original(rows)

    actions.evaluate = counting
    full = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 12)
    assert full.complete and len(scored) == 3 and full.new_log_prob.shape == (12,)
    with torch.no_grad():
        per_batch = [float(DenoiseKL.kl(actions, b, o, original(b)).double().sum()) / 12 for b, o in zip(batches, olds)]
    bound = per_batch[0] * 0.5  # the first batch alone already exceeds it
    scored.clear()
    stopped = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 12, kl_bound=bound)
    assert not stopped.complete and len(scored) == 1 and bound < stopped.kl <= full.kl
    scored.clear()
    # A bound the whole round's KL stays under is never hit: the whole pass, the same numbers.
    same = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 12, kl_bound=full.kl * (1 + 1e-9))
    assert same.complete and len(scored) == 3
    assert same.kl == full.kl and same.surrogate == full.surrogate and torch.equal(same.new_log_prob, full.new_log_prob)


def test_accepted_step_keeps_the_full_round_kl_bound_with_a_small_fvp_subsample():
    """The FVP sees 4 of 12 actions; the accepted step's KL, recomputed independently on all 12,
    is within max_kl (the bound is checked on the round, not on the subsample)."""
    actions = LinearGaussianSteps(seed=4)
    params = list(actions.model.parameters())
    rows = np.arange(actions.num_actions)
    with torch.no_grad():
        old_mean = actions.mean(rows).clone()
    settings = trpo_settings(max_kl=0.01, fvp_subsample=4, cg_iterations=20, line_search_shrink=0.5)
    row = trpo_update(actions, params, settings, progress=False, kl_to_base=0.0)
    with torch.no_grad():
        new_mean = actions.mean(rows)
    kl = float((0.5 * ((new_mean - old_mean) / actions.std.view(-1, 1, 1, 1)).pow(2).flatten(1).mean(1)).mean())
    assert row["accepted"] == 1.0 and row["fvp_actions"] == 4
    assert 0 < kl <= settings.max_kl * (1 + 1e-12) and kl == pytest.approx(row["kl"], rel=1e-10)


def uneven_round(rows: int = 24, parts: int = 6):
    """A round whose last minibatch moves most: its states are 6 times larger, so a step of W moves
    its means (and KL) most. The old distributions are snapshot after that change."""
    actions = LinearGaussianSteps(rows=rows, seed=5)
    batches = np.array_split(np.arange(rows), parts)
    with torch.no_grad():
        actions.x[batches[-1]] *= 6.0
    olds = [DenoiseKL.snapshot(actions, b, actions.evaluate(b)) for b in batches]
    return actions, batches, olds


def test_ordered_line_search_pass_gives_the_same_floats_and_rejects_sooner():
    actions, batches, olds = uneven_round()
    params = list(actions.model.parameters())
    with torch.no_grad():
        params[0].add_(0.05 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    scored = []
    original = actions.evaluate
    actions.evaluate = lambda rows: scored.append(int(rows[0])) or original(rows)
    plain = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24)
    parts = plain.batch_kl
    assert plain.complete and len(scored) == 6 and all(p is not None and p > 0 for p in parts)
    assert max(range(6), key=lambda k: parts[k]) == 5 and parts[5] > 2 * sum(parts[:5])  # the large states lead
    # Any order: the same floats, the log-probs in the batches' own order.
    for order in ([5, 4, 3, 2, 1, 0], [2, 5, 0, 3, 1, 4]):
        again = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24, order=order)
        assert again.kl == plain.kl and again.surrogate == plain.surrogate
        assert torch.equal(again.new_log_prob, plain.new_log_prob) and again.batch_kl == parts
    # A bound the last batch alone exceeds: the own order scores all six, the KL order one.
    bound = 0.9 * parts[5]
    assert sum(parts[:5]) < bound
    scored.clear()
    stopped = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24, kl_bound=bound)
    assert not stopped.complete and len(scored) == 6
    scored.clear()
    ordered = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24, kl_bound=bound,
                                        order=next_order(None, parts, 1.0, [None] * 6))
    assert not ordered.complete and scored == [int(batches[5][0])]
    assert ordered.batch_kl[5] == parts[5] and ordered.batch_kl[:5] == [None] * 5
    with pytest.raises(ValueError):
        evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24, order=[0, 1, 2])


def test_next_order_ranks_by_kl_per_squared_step_and_places_unscored_batches_at_the_mean():
    known = [None] * 4
    # Scored at fraction 1: batches 0 and 2 (the pass stopped); 1 and 3 unknown: the mean, 2.0.
    assert next_order(None, [1.0, None, 3.0, None], 1.0, known) == [2, 1, 3, 0]
    assert known == [1.0, None, 3.0, None]
    # At fraction 0.5 batch 1 holds 1.0, i.e. 4.0 per unit squared step: first; batch 3 still at the mean.
    assert next_order([2, 1, 3, 0], [None, 1.0, None, None], 0.5, known) == [1, 2, 3, 0]
    assert known == [1.0, 4.0, 3.0, None]
    # Nothing scored (several ranks never stop early) or no batch known: the previous order.
    assert next_order([3, 2, 1, 0], None, 0.8, [None] * 4) == [3, 2, 1, 0]
    assert next_order(None, [None, None], 0.8, [None, None]) is None


def test_ordered_line_search_takes_the_same_step_with_fewer_batches_scored():
    """Both searches reject the same tries and keep the same fraction, KL, gain and parameters bit for
    bit; the ordered one scores fewer minibatches (its rejected tries stop at the heavy batch)."""
    results, counts, finals = [], [], []
    for ordered in (False, True):
        actions, batches, olds = uneven_round()
        params = list(actions.model.parameters())
        scored = []
        original = actions.evaluate
        actions.evaluate = lambda rows, original=original, scored=scored: scored.append(1) or original(rows)
        with torch.no_grad():
            surrogate_old = evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24).surrogate
        scored.clear()
        # A step along the surrogate's gradient, long enough for several rejected tries.
        rows = np.arange(24)
        s = actions.evaluate(rows)
        grads = torch.autograd.grad((torch.exp(s.new_log_prob - s.old_log_prob) * s.advantages).mean(), params)
        scored.clear()
        step = [3.0 * g / float(flat(grads).norm()) for g in grads]

        def evaluate(bound, order=None, actions=actions, batches=batches, olds=olds):
            return evaluate_surrogate_and_kl(actions, DenoiseKL, batches, olds, 24, kl_bound=bound, order=order)

        result = backtracking_line_search(params, step, evaluate, surrogate_old, 0.01, 0.8, 20,
                                          batches=len(batches) if ordered else None)
        results.append(result)
        counts.append(len(scored))
        finals.append(flat(params))
    plain, ordered = results
    assert plain.accepted and plain.tries >= 4
    assert (ordered.tries, ordered.fraction, ordered.kl, ordered.gain) == (plain.tries, plain.fraction, plain.kl, plain.gain)
    assert torch.equal(finals[0], finals[1])
    assert counts[1] < counts[0]


@pytest.fixture(scope="module")
def longer_round(tmp_path_factory):
    """4 images x 8 steps: several step sigmas in the round (the 3-step round trains one step)."""
    exp = experiment("lora_unet", images=4, steps=8)
    policy = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp)
    perturb_lora_b(policy.backend.unet)
    return policy, sample(policy, exp, 0, tmp_path_factory.mktemp("longer_round"))


def test_regroup_by_sigma_keeps_every_step_once_with_its_own_snapshot(longer_round):
    policy, path = longer_round
    actions = DenoiseActions(policy, path, np.zeros((4, 8)), 4, timestep_fraction=1.0, seed=0)
    batches = list(actions.minibatches(0))
    count = sum(len(b) for b in batches)
    with torch.no_grad():
        olds = [DenoiseKL.snapshot(actions, b, actions.evaluate(b)) for b in batches]
    tag = lambda b: torch.as_tensor(b.image_index * 100 + b.step_index, dtype=torch.float32)
    bases = [tag(b).view(-1, 1, 1, 1).expand_as(o[0]).clone() for b, o in zip(batches, olds)]
    grouped, grouped_olds, grouped_bases = regroup_by_sigma(batches, olds, bases, 5)
    assert [len(b) for b in grouped] == [5] * (count // 5) + ([count % 5] if count % 5 else [])
    keys = lambda bs: sorted(zip(np.concatenate([b.image_index for b in bs]).tolist(),
                                 np.concatenate([b.step_index for b in bs]).tolist()))
    assert keys(grouped) == keys(batches)  # every (image, step) once
    sigma = torch.cat([o[1] for o in grouped_olds])
    assert bool((sigma[1:] >= sigma[:-1]).all()) and sigma[0] < sigma[-1]  # smallest sigma (largest 1/sigma^2) first
    with torch.no_grad():
        for b, (mean, std), base in zip(grouped, grouped_olds, grouped_bases):
            again = actions.evaluate(b)
            assert torch.equal(std, again.std) and torch.allclose(mean, again.mean, rtol=0, atol=1e-6)
            assert torch.equal(base[:, 0, 0, 0], tag(b))  # each row's base mean went with it
    assert regroup_by_sigma(batches, olds, None, 5)[2] is None
    actions.close()


def test_line_search_actions_counts_the_rows_the_search_scored():
    actions = LinearGaussianSteps(seed=4)
    params = list(actions.model.parameters())
    rows = []
    original = actions.evaluate
    actions.evaluate = lambda r: rows.append(len(r)) or original(r)
    # fvp_subsample = the first minibatch: the FVP reuses the gradient pass's graph and scores nothing.
    row = trpo_update(actions, params, trpo_settings(max_kl=0.01, fvp_subsample=4, cg_iterations=20, line_search_shrink=0.5),
                      progress=False, kl_to_base=0.0)
    assert row["accepted"] == 1.0 and row["line_search_tries"] >= 1
    assert row["line_search_actions"] == sum(rows) - actions.num_actions  # all but the gradient pass
    assert actions.num_actions <= row["line_search_actions"] <= row["line_search_tries"] * actions.num_actions
