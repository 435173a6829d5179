"""Every divergence against an fp64 NumPy computation of its formula, and against TRL."""

import numpy as np
import pytest
import torch

from codelift.train.losses import (bucketed_log_probs, chunked_sums, cross_entropy_sum, divergence,
                                   distillation_objective, tempered_log_probs)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(log_p, log_q):
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def reference(teacher_logits, student_logits, kind, beta, temperature):
    """D(p_T || p_S) per position, in float64 NumPy, straight from the formulas."""
    t = _np_log_softmax(teacher_logits.astype(np.float64) / temperature)
    s = _np_log_softmax(student_logits.astype(np.float64) / temperature)
    if kind == "forward":
        return _np_kl(t, s)
    if kind == "reverse":
        return _np_kl(s, t)
    m = np.log(beta * np.exp(t) + (1 - beta) * np.exp(s))
    return beta * _np_kl(t, m) + (1 - beta) * _np_kl(s, m)


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, 5, 40, generator=gen) * 3
    student = torch.randn(3, 5, 40, generator=gen) * 3
    mask = torch.ones(3, 5)
    mask[0, :2] = 0  # prompt positions
    mask[2, 3:] = 0  # padding
    return teacher, student, mask


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("kind,beta", [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)])
def test_divergences_match_the_float64_formula_with_masking(logits, kind, beta, temperature):
    teacher, student, mask = logits
    ours = divergence(tempered_log_probs(teacher, temperature), tempered_log_probs(student, temperature), kind, beta)
    expected = reference(teacher.numpy(), student.numpy(), kind, beta, temperature)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-6)
    masked_mean = (ours * mask).sum() / mask.sum()
    np.testing.assert_allclose(masked_mean.item(), (expected * mask.numpy()).sum() / mask.sum().item(), rtol=1e-4)


def test_jsd_ends_are_exactly_forward_and_reverse_kl(logits):
    teacher, student, _ = logits
    t, s = tempered_log_probs(teacher, 2.0), tempered_log_probs(student, 2.0)
    assert torch.equal(divergence(t, s, "jsd", 0.0), divergence(t, s, "forward"))
    assert torch.equal(divergence(t, s, "jsd", 1.0), divergence(t, s, "reverse"))
    # The mixture form shrinks towards 0 near the ends, which is why they are defined as the KLs.
    assert divergence(t, s, "jsd", 1e-4).mean() < 0.01 * divergence(t, s, "forward").mean()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_agrees_with_trl_generalized_jsd_loss(logits, beta):
    """TRL averages over unmasked tokens and never applies T^2: the same number as our masked mean."""
    from trl.experimental.gkd import GKDTrainer

    teacher, student, mask = logits
    labels = torch.where(mask.bool(), torch.ones(3, 5, dtype=torch.long), torch.full((3, 5), -100))
    trl = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=2.0)
    kind = {0.0: "forward", 1.0: "reverse"}.get(beta, "jsd")
    ours = divergence(tempered_log_probs(teacher, 2.0), tempered_log_probs(student, 2.0), kind, beta)
    torch.testing.assert_close((ours * mask).sum() / mask.sum(), trl, rtol=1e-5, atol=1e-6)


def test_divergence_runs_in_float32_under_bf16_autocast(logits):
    teacher, student, _ = logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = divergence(tempered_log_probs(teacher.bfloat16(), 2.0), tempered_log_probs(student.bfloat16(), 2.0))
    assert out.dtype == torch.float32


def test_objective_scales_the_kd_term_by_t_squared():
    ce, kd = torch.tensor(3.0), torch.tensor(0.5)
    assert distillation_objective(ce, kd, alpha=0.5, temperature=2.0).item() == pytest.approx(0.5 * 4 * 0.5 + 0.5 * 3)
    assert distillation_objective(ce, kd, alpha=0.0, temperature=2.0).item() == 3.0


def _top_k_cache(teacher, k):
    """What the cache stores: top-k of the full log-softmax at T = 1, and the log tail mass."""
    log_probs = torch.log_softmax(teacher, -1)
    top, ids = log_probs.topk(k, -1)
    tail = log_probs.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return ids, top, tail


@pytest.mark.parametrize("kind,beta", [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.5)])
def test_cache_with_k_equal_to_the_vocabulary_is_the_full_divergence(logits, kind, beta):
    teacher, student, _ = logits
    teacher, student = teacher.reshape(-1, 40), student.reshape(-1, 40)
    ids, top, tail = _top_k_cache(teacher, k=40)
    t_b, s_b = bucketed_log_probs(student, ids, top, tail, temperature=2.0)
    full = divergence(tempered_log_probs(teacher, 2.0), tempered_log_probs(student, 2.0), kind, beta)
    torch.testing.assert_close(divergence(t_b, s_b, kind, beta), full, rtol=1e-5, atol=1e-6)


def test_cache_tail_bucket_and_renormalised_forms_at_t1(logits):
    teacher, student, _ = logits
    teacher, student = teacher.reshape(-1, 40).double(), student.reshape(-1, 40).double()
    ids, top, tail = _top_k_cache(teacher, k=5)
    t_b, s_b = bucketed_log_probs(student, ids, top, tail, temperature=1.0)
    p_t, p_s = torch.softmax(teacher, -1), torch.softmax(student, -1)
    in_top = torch.zeros_like(p_t, dtype=torch.bool).scatter(-1, ids, True)
    expected_t = torch.cat([p_t.gather(-1, ids), (p_t * ~in_top).sum(-1, keepdim=True)], -1)
    expected_s = torch.cat([p_s.gather(-1, ids), (p_s * ~in_top).sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(t_b.exp().double(), expected_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s_b.exp().double(), expected_s, rtol=1e-5, atol=1e-7)
    # The bucketed KL coarsens the distributions, so it cannot exceed the full KL.
    assert (divergence(t_b, s_b) <= divergence(torch.log(p_t), torch.log(p_s)) + 1e-6).all()
    t_r, s_r = bucketed_log_probs(student, ids, top, tail, temperature=1.0, tail="renormalize")
    torch.testing.assert_close(t_r.exp().double(), expected_t[:, :5] / expected_t[:, :5].sum(-1, keepdim=True))
    torch.testing.assert_close(s_r.exp().double(), expected_s[:, :5] / expected_s[:, :5].sum(-1, keepdim=True))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_cached_loss_is_zero_for_a_student_with_the_teachers_top_k_and_tail_masses(logits, temperature):
    """The teacher itself, and a student whose tail differs token by token but not in total, have
    nothing left to learn from a top-k cache at any temperature (tempering the student's tail token
    by token, as the first version did, gave both a positive loss at T != 1 and a sharper optimum)."""
    teacher, _, _ = logits
    teacher = teacher.reshape(-1, 40).double()
    ids, top, tail = _top_k_cache(teacher, k=5)
    in_tail = ~torch.zeros_like(teacher, dtype=torch.bool).scatter(-1, ids, True)
    log_p = torch.log_softmax(teacher, -1)
    reshaped = log_p.clone()
    reshaped[in_tail] = torch.log_softmax(torch.randn(in_tail.sum(), dtype=torch.float64).reshape(len(teacher), -1),
                                          -1).flatten() + tail.repeat_interleave(35)
    for student in (teacher, reshaped):
        t_b, s_b = bucketed_log_probs(student, ids, top, tail, temperature=temperature)
        assert divergence(t_b, s_b).abs().max().item() < 1e-6
    # And the tempered distributions are the T = 1 (k+1)-way ones raised to 1/T and renormalised.
    t_b, _ = bucketed_log_probs(teacher, ids, top, tail, temperature=temperature)
    masses = torch.cat([log_p.gather(-1, ids).exp(), tail.exp().unsqueeze(-1)], -1) ** (1 / temperature)
    torch.testing.assert_close(t_b.exp().double(), masses / masses.sum(-1, keepdim=True), rtol=1e-5, atol=1e-7)


def test_chunked_sums_equal_unchunked_in_value_and_gradient():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    head = torch.nn.Linear(16, 50)
    targets = torch.randint(0, 50, (37,), generator=gen)

    def loss(h, y):
        return (cross_entropy_sum(head(h), y),)

    results = []
    for chunk in (5, 1000):
        head.zero_grad()
        hidden.grad = None
        (total,) = chunked_sums(loss, hidden, targets, chunk_size=chunk)
        total.backward()
        results.append((total.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
