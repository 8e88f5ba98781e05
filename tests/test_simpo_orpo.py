"SimPO and ORPO: the losses against DESIGN.md's formulas in float64, and the reference-free path running no reference on a real tiny model."
import math
import pytest
import torch
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.data import tokenize_preferences, PreferenceCollator
from rlhf_nb.train import TrainConfig
from rlhf_nb.dpo import preference_batch, concatenated_logps, dpo, DPOConfig
from rlhf_nb.simpo import simpo_loss, simpo, SimPOConfig
from rlhf_nb.orpo import orpo_loss, orpo, ORPOConfig, log_odds

def log_sigmoid(t: float) -> float:
    return -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))

def mean_logps(B, seed, low=4.0):
    g = torch.Generator().manual_seed(seed)
    return (-torch.rand(B, generator=g, dtype=torch.float64) * low - 1e-3, -torch.rand(B, generator=g, dtype=torch.float64) * low - 1e-3)

@pytest.mark.parametrize("beta,gamma,seed", [(2.0, 1.0, 0), (2.5, 0.0, 1), (10.0, 4.0, 2), (0.3, 0.7, 3)])
def test_simpo_loss_is_the_design_formula(beta, gamma, seed):
    c, r = mean_logps(256, seed)
    losses, cr, rr = simpo_loss(c.clone().requires_grad_(), r, beta=beta, gamma=gamma)
    want = torch.tensor([-log_sigmoid(beta * (ci - ri) - gamma) for ci, ri in zip(c.tolist(), r.tolist())], dtype=torch.float64)
    torch.testing.assert_close(losses.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cr, beta * c, rtol=0, atol=0); torch.testing.assert_close(rr, beta * r, rtol=0, atol=0)
    assert losses.requires_grad and not cr.requires_grad and not rr.requires_grad

@pytest.mark.parametrize("lam,seed", [(0.1, 0), (0.0, 1), (1.0, 2), (3.0, 3)])
def test_orpo_loss_is_the_design_formula(lam, seed):
    c, r = mean_logps(256, seed)
    losses, cr, rr = orpo_loss(c.clone().requires_grad_(), r, lam=lam)
    lodds = lambda lp: math.log(math.exp(lp)) - math.log(1 - math.exp(lp))          # log p − log(1 − p), p = exp(logp)
    want = torch.tensor([-ci - lam * log_sigmoid(lodds(ci) - lodds(ri)) for ci, ri in zip(c.tolist(), r.tolist())], dtype=torch.float64)
    torch.testing.assert_close(losses.detach(), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cr, lam * c, rtol=0, atol=0); torch.testing.assert_close(rr, lam * r, rtol=0, atol=0)
    assert losses.requires_grad and not cr.requires_grad and not rr.requires_grad

def test_orpo_log_odds_at_extremes():
    import mpmath
    mpmath.mp.dps = 400                                                         # the naive formula, with digits to spare
    xs = [-1e-200, -1e-17, -1e-9, -0.3, -math.log(2), -2.0, -45.0, -300.0, -740.0]
    got = log_odds(torch.tensor(xs, dtype=torch.float64))
    want = torch.tensor([float(mpmath.mpf(x) - mpmath.log(1 - mpmath.exp(mpmath.mpf(x)))) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=2e-16)                # atol: log odds ≈ 0 at p = ½ (an ulp of log 2)
    lp = torch.tensor([0.0, -1e-30, -800.0], requires_grad=True)              # p = 1 in float32, p ≈ 1, p = 0
    loss = orpo_loss(lp, torch.full((3,), -1.0), lam=1.0)[0].sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()

def test_bad_inputs_name_the_field():
    c, r = mean_logps(4, 0)
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"): simpo_loss(c, r[:3])
    with pytest.raises(ValueError, match="beta must be > 0"): simpo_loss(c, r, beta=0.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"): simpo_loss(c, r, gamma=-1.0)
    with pytest.raises(ValueError, match="lam must be >= 0"): orpo_loss(c, r, lam=-0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps must be <= 0"): orpo_loss(-c, r)

ROWS = [{"prompt": f"Film {i} was", "chosen": f" {w} and fun.", "rejected": f" {b} and slow."}
        for i, (w, b) in enumerate([("good", "bad"), ("great", "dull"), ("fine", "weak"), ("nice", "poor")] * 3)]

@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer([r["prompt"] + r[k] for r in ROWS for k in ("chosen", "rejected")], vocab_size=300)
    ds, _ = tokenize_preferences(ROWS, tok, max_length=24)
    return tok, tiny_llama(tok), PreferenceCollator(tok.pad_token_id)([ds[i] for i in range(4)])

def counting(model):
    calls = []
    return calls, model.register_forward_hook(lambda *_: calls.append(1))

def test_reference_free_batch_runs_the_policy_once(tiny):
    tok, model, batch = tiny
    calls, hook = counting(model)
    try:
        loss, m = preference_batch(model, batch, simpo_loss, reference_free=True, average=True, beta=2.0, gamma=1.0)
        assert len(calls) == 1                                                  # one forward: the policy's
        with torch.no_grad(): c, r = concatenated_logps(model, batch, average=True)
        torch.testing.assert_close(loss.detach(), simpo_loss(c, r, 2.0, 1.0)[0].mean(), rtol=1e-5, atol=1e-6)
        calls.clear()
        preference_batch(model, batch, orpo_loss, reference_free=True, average=True, lam=0.1)
        assert len(calls) == 1
        calls.clear()
        import copy
        preference_batch(model, batch, ref=copy.deepcopy(model), beta=0.1)     # the copy shares the hook: DPO counts two
        assert len(calls) == 2
    finally: hook.remove()

@pytest.mark.parametrize("train", ["simpo", "orpo"])
def test_reference_free_training_makes_no_reference(tiny, tmp_path, train):
    tok, _, _ = tiny
    steps = 3
    cfg = lambda name: TrainConfig(output_dir=str(tmp_path / name), max_steps=steps, batch_size=4, lr=1e-3, progress=False, save_final=False)
    model = tiny_llama(tok)
    calls, hook = counting(model)
    try:
        if train == "simpo": t = simpo(model, tok, ROWS, cfg("free"), SimPOConfig(max_length=24))
        else: t = orpo(model, tok, ROWS, cfg("free"), ORPOConfig(max_length=24))
        assert len(calls) == steps                                              # one forward per step: no reference pass
        assert t.batch_fn.keywords["ref"] is None and t.batch_fn.keywords["reference_free"]
        calls.clear()
        dpo(model, tok, ROWS, cfg("dpo"), DPOConfig(max_length=24))             # a frozen copy made here: it fires the hook too
        assert len(calls) == 2 * steps
    finally: hook.remove()
    names = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"}
    if train == "orpo": names |= {"nll_loss", "log_odds_ratio", "log_odds_chosen"}
    assert names <= set(t.history[0])

def test_a_reference_model_is_refused(tiny, tmp_path):
    from rlhf_nb.dpo import _fit_preferences
    tok, model, _ = tiny
    with pytest.raises(ValueError, match="reference-free objective takes no ref_model"):
        _fit_preferences(model, tok, ROWS, TrainConfig(output_dir=str(tmp_path), max_steps=1, progress=False), SimPOConfig(max_length=24),
                         tiny_llama(tok), simpo_loss, objective="simpo", reference_free=True)
