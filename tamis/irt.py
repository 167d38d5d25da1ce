"""Item response theory: 1PL (Rasch) and 2PL fits by MAP, vectorized in torch over all items.

The model: subject j answers item i correctly with probability sigma(a_i (theta_j - b_i)); b is
the difficulty (on theta's logit scale), a the discrimination (1 under 1PL), theta the ability.
Priors are theta ~ N(0, 1), b ~ N(0, prior_sd^2) and, under 2PL, log a ~ N(0, prior_sd^2). The
priors keep items that every subject answers right (or wrong) finite, where maximum likelihood
sends b to -inf (+inf).

* :func:`fit_irt` fits abilities and items jointly by Newton steps on the whole posterior
  (Fisher scoring where the 2PL's observed information is not positive definite), with
  backtracking. The information matrix is an "arrow": one small block per item plus a dense
  subjects x subjects block, so each step eliminates the item blocks in closed form and solves a
  subjects x subjects system (a Schur complement). It takes 5 (1PL) to about 30 (2PL, started
  from the 1PL fit) steps whatever the number of items, where alternating item and ability
  updates crawl (the shared location of theta and b moves by a few percent per sweep). Under
  2PL the abilities are then standardized (mean 0, sd 1) and the items refitted given them: a
  2PL's scale is otherwise left to the balance of the priors, which shrinks it.
* :func:`fit_items` fits items given fixed abilities: every item is then independent, so a pool
  can be scored chunk by chunk with the abilities from a calibration fit and the results do not
  depend on the chunking (Beam's practice: fit abilities globally, then items in parallel).
* :func:`estimate_theta` is the reverse: abilities given fixed items (DDS-MAE's probe step).

Responses are a [n_subjects, n_items] array of 0/1 (values in between act as soft labels),
NaN where a subject did not answer. Standard errors are conditional ones, from the diagonal
blocks of the observed information at the optimum: per item its 2x2 (or 1x1) block, per subject
its own entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODELS = ("1pl", "2pl")


@dataclass(frozen=True)
class IRTFit:
    """Fitted parameters (numpy float64) and how the fit went."""

    b: np.ndarray  # [n_items] difficulty
    a: np.ndarray  # [n_items] discrimination (all 1 under 1PL)
    theta: np.ndarray  # [n_subjects] ability
    se_b: np.ndarray
    se_a: np.ndarray  # 0 under 1PL (a is fixed)
    se_theta: np.ndarray
    model: str
    iterations: int
    converged: bool
    log_posterior: float


def _check_model(model: str) -> str:
    model = model.lower()
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return model


def _tensors(responses, device: str):
    """(y, mask) float64 tensors from an array with NaN for missing answers."""
    import torch

    r = torch.as_tensor(np.asarray(responses, dtype=np.float64), device=device)
    if r.ndim != 2:
        raise ValueError(f"responses must be [n_subjects, n_items], got shape {tuple(r.shape)}")
    mask = ~torch.isnan(r)
    y = torch.where(mask, r, torch.zeros_like(r))
    if ((y < 0) | (y > 1)).any():
        raise ValueError("responses must lie in [0, 1] (or be NaN for missing)")
    return y, mask.to(r.dtype)


def _log_lik(y, m, z):
    """Bernoulli log-likelihood y z - softplus(z), masked, summed over subjects: [n_items]."""
    import torch

    return (m * (y * z - torch.nn.functional.softplus(z))).sum(0)


class _Posterior:
    """The log posterior and its pieces for responses ``y`` (mask ``m``), all float64 tensors."""

    def __init__(self, y, m, two_pl: bool, prior_sd: float, theta_sd: float = 1.0):
        self.y, self.m, self.two_pl = y, m, two_pl
        self.vb = prior_sd ** 2  # variance of the b (and log a) prior
        self.vt = theta_sd ** 2

    def z(self, theta, b, alpha):
        a = alpha.exp()
        return a * (theta[:, None] - b), a

    def item_terms(self, theta, b, alpha):
        """Per-item log posterior (likelihood plus the item priors): [n_items]."""
        z, _ = self.z(theta, b, alpha)
        out = _log_lik(self.y, self.m, z) - b.square() / (2 * self.vb)
        if self.two_pl:
            out = out - alpha.square() / (2 * self.vb)
        return out

    def total(self, theta, b, alpha) -> float:
        return float(self.item_terms(theta, b, alpha).sum() - theta.square().sum() / (2 * self.vt))

    def pieces(self, theta, b, alpha):
        """Gradients and Fisher information blocks at (theta, b, alpha)."""
        import torch

        z, a = self.z(theta, b, alpha)
        p = torch.sigmoid(z)
        w = self.m * p * (1 - p)  # [J, I]
        r = self.m * (self.y - p)
        d = theta[:, None] - b  # dz/dalpha = a d
        a2 = a.square()
        g_theta = (r * a).sum(1) - theta / self.vt
        g_b = -a * r.sum(0) - b / self.vb
        f_bb = a2 * w.sum(0) + 1 / self.vb
        out = {"p": p, "w": w, "r": r, "d": d, "a": a, "a2": a2, "g_theta": g_theta, "g_b": g_b, "f_bb": f_bb,
               "f_tt": (w * a2).sum(1) + 1 / self.vt}
        if self.two_pl:
            out["g_alpha"] = a * (r * d).sum(0) - alpha / self.vb
            out["f_ba"] = -a2 * (w * d).sum(0)
            out["f_aa"] = a2 * (w * d.square()).sum(0) + 1 / self.vb
            out["c_a"] = w * a2 * d  # Fisher information between theta_j and alpha_i
        return out


def _observed(q: dict) -> dict:
    """The 2PL's observed information (Newton) in place of Fisher's where every item block is
    positive definite: -d2 log p = Fisher - sum_j r_ij d2 z_ij, and z = e^alpha (theta - b) has
    d2z/(dtheta dalpha) = a, d2z/(db dalpha) = -a, d2z/dalpha2 = a d (the rest 0). Newton converges
    quadratically near the optimum, where Fisher scoring can cycle on items with few answers."""
    import torch

    a = q["a"]
    f_ba = q["f_ba"] + a * q["r"].sum(0)
    f_aa = q["f_aa"] - a * (q["r"] * q["d"]).sum(0)
    ok = (f_aa > 0) & (q["f_bb"] * f_aa - f_ba.square() > 0)
    out = dict(q)
    out["f_ba"] = torch.where(ok, f_ba, q["f_ba"])
    out["f_aa"] = torch.where(ok, f_aa, q["f_aa"])
    out["c_a"] = torch.where(ok, q["c_a"] - q["r"] * a, q["c_a"])
    return out


def _item_inverse(q: dict, two_pl: bool):
    """Per-item inverse information blocks: (inv_bb, inv_ba, inv_aa) (the last two None under 1PL)."""
    if not two_pl:
        return 1 / q["f_bb"], None, None
    det = q["f_bb"] * q["f_aa"] - q["f_ba"].square()
    return q["f_aa"] / det, -q["f_ba"] / det, q["f_bb"] / det


def _item_step(q: dict, two_pl: bool):
    """Scoring step for each item given fixed abilities: (db, dalpha)."""
    inv_bb, inv_ba, inv_aa = _item_inverse(q, two_pl)
    if not two_pl:
        return inv_bb * q["g_b"], None
    return inv_bb * q["g_b"] + inv_ba * q["g_alpha"], inv_ba * q["g_b"] + inv_aa * q["g_alpha"]


def _joint_step(q: dict, two_pl: bool):
    """Scoring step for all parameters at once: item blocks eliminated in closed form, then the
    subjects x subjects Schur complement solved by Cholesky. Returns (dtheta, db, dalpha), or None
    when the information given is not positive definite."""
    import torch

    inv_bb, inv_ba, inv_aa = _item_inverse(q, two_pl)
    # Cross information between theta_j and the item parameters: [J, I] each.
    c_b = -q["w"] * q["a2"]
    if not two_pl:
        ainv_g_b = inv_bb * q["g_b"]
        schur = torch.diag(q["f_tt"]) - (c_b * inv_bb) @ c_b.T
        rhs = q["g_theta"] - c_b @ ainv_g_b
    else:
        c_a = q["c_a"]
        ainv_g_b = inv_bb * q["g_b"] + inv_ba * q["g_alpha"]
        ainv_g_a = inv_ba * q["g_b"] + inv_aa * q["g_alpha"]
        schur = (torch.diag(q["f_tt"]) - (c_b * inv_bb) @ c_b.T - (c_b * inv_ba) @ c_a.T
                 - (c_a * inv_ba) @ c_b.T - (c_a * inv_aa) @ c_a.T)
        rhs = q["g_theta"] - c_b @ ainv_g_b - c_a @ ainv_g_a
    chol, info = torch.linalg.cholesky_ex((schur + schur.T) / 2)
    if int(info) != 0:
        return None
    dtheta = torch.cholesky_solve(rhs[:, None], chol)[:, 0]
    if not two_pl:
        return dtheta, ainv_g_b - inv_bb * (c_b.T @ dtheta), None
    cb_t, ca_t = c_b.T @ dtheta, c_a.T @ dtheta
    return dtheta, ainv_g_b - (inv_bb * cb_t + inv_ba * ca_t), ainv_g_a - (inv_ba * cb_t + inv_aa * ca_t)


def _observed_item_se(post: _Posterior, theta, b, alpha):
    """(se_b, se_a) from each item's observed-information block (Fisher where that is not
    positive definite), conditional on the abilities."""
    import torch

    q = post.pieces(theta, b, alpha)
    if not post.two_pl:
        return q["f_bb"].rsqrt(), torch.zeros_like(b)
    var_b, _, var_alpha = _item_inverse(_observed(q), True)
    # Delta method: a = exp(alpha), so se(a) = a se(alpha).
    return var_b.sqrt(), q["a"] * var_alpha.sqrt()


def _initial_items(y, m, prior_sd: float):
    """Starting difficulties: minus the smoothed log-odds of a correct answer, shrunk toward 0."""
    import torch

    n = m.sum(0)
    rate = ((y * m).sum(0) + 0.5) / (n + 1.0)
    return (-torch.log(rate / (1 - rate))).clamp(-3 * prior_sd, 3 * prior_sd)


def _joint_fit(post: _Posterior, theta, b, alpha, iterations: int, tol: float):
    """Scoring steps on the joint posterior with backtracking until nothing moves by ``tol``.
    Returns (theta, b, alpha, iterations, converged)."""
    two_pl, n_subjects = post.two_pl, len(theta)
    current = post.total(theta, b, alpha)
    converged, it = False, 0
    for it in range(1, iterations + 1):
        q = post.pieces(theta, b, alpha)
        # 2PL: Newton (observed information) where it is positive definite, else Fisher scoring.
        direction = (_joint_step(_observed(q), True) if two_pl else None) or _joint_step(q, two_pl)
        if direction is None:  # not even Fisher's information factorizes: numerically stuck
            break
        dtheta, db, dalpha = direction
        step = 1.0
        for _ in range(30):  # backtracking: a full step can overshoot on the 2PL's curved surface
            new = (theta + step * dtheta, b + step * db, alpha + step * dalpha if two_pl else alpha)
            value = post.total(*new)
            if value >= current - 1e-12 * abs(current):
                break
            step /= 2
        else:  # no step improves the posterior: as converged as the arithmetic allows
            converged = True
            break
        if two_pl and n_subjects > 1:
            # Only the abilities' configuration matters here: their scale drifts slowly along the
            # prior-only direction, and the items are refitted once the abilities are standardized.
            moved = float((_standardized(new[0]) - _standardized(theta)).abs().max())
        else:
            moved = max(float(step * dtheta.abs().max()), float(step * db.abs().max()))
        theta, b, alpha = new
        current = value
        if moved < tol:
            converged = True
            break
    return theta, b, alpha, it, converged


def fit_irt(responses, model: str = "1pl", prior_sd: float = 1.0, iterations: int = 100, tol: float = 1e-6,
            device: str = "cpu") -> IRTFit:
    """Joint MAP fit of abilities and items (see module docstring).

    ``responses`` is [n_subjects, n_items] with NaN for missing answers; ``prior_sd`` is the
    standard deviation of the N(0, sd^2) priors on b and log a (theta's prior is N(0, 1)).
    Stops when no parameter moves by more than ``tol``. Under 2PL the final abilities are
    standardized and the items are MAP given them, so ``fit_items(responses, fit.theta)`` gives
    back the same items.
    """
    import torch

    two_pl = _check_model(model) == "2pl"
    y, m = _tensors(responses, device)
    n_subjects, n_items = y.shape
    theta = torch.zeros(n_subjects, dtype=y.dtype, device=y.device)
    b = _initial_items(y, m, prior_sd)
    alpha = torch.zeros(n_items, dtype=y.dtype, device=y.device)
    # The 2PL starts from the 1PL fit: near-unanimous items send a cold 2PL start's discriminations
    # far off before its Newton steps settle.
    theta, b, _, it, converged = _joint_fit(_Posterior(y, m, False, prior_sd), theta, b, alpha, iterations, tol)
    post = _Posterior(y, m, two_pl, prior_sd)
    if two_pl:
        theta, b, alpha, more, converged = _joint_fit(post, theta, b, alpha, iterations, tol)
        it += more
    if two_pl and n_subjects > 1 and float(theta.std()) > 1e-9:
        # A 2PL's scale is set by the priors alone (a theta*c, b*c, a/c fit equally well), and
        # with many items the N(0, 1) prior on b outweighs theta's and shrinks the abilities
        # to sd ~0.5 (a doubles). Fix the scale the way theta's prior means it: standardize the
        # abilities, then refit each item given them (what fit_items does to every pool chunk).
        mean, sd = theta.mean(), theta.std()
        theta = (theta - mean) / sd
        b, alpha, inner, inner_ok = _items_given_theta(y, m, theta, True, prior_sd, iterations, tol * 1e-2,
                                                       (b - mean) / sd, alpha + torch.log(sd))
        it += inner
        converged = converged and inner_ok
    return _result(post, theta, b, alpha, it, converged)


def _items_given_theta(y, m, theta, two_pl: bool, prior_sd: float, iterations: int, tol: float, b=None, alpha=None):
    """Per-item MAP given abilities, all items at once; each item stops on its own when its step
    is under ``tol``. Returns (b, alpha, iterations, converged)."""
    import torch

    b = _initial_items(y, m, prior_sd) if b is None else b.clone()
    alpha = torch.zeros_like(b) if alpha is None else alpha.clone()
    active = torch.ones_like(b, dtype=torch.bool)
    it = 0
    for it in range(1, iterations + 1):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        sub = _Posterior(y[:, idx], m[:, idx], two_pl, prior_sd)
        b_i, a_i = b[idx], alpha[idx]
        q = sub.pieces(theta, b_i, a_i)
        db, dalpha = _item_step(_observed(q) if two_pl else q, two_pl)
        if dalpha is None:
            dalpha = torch.zeros_like(db)
        current = sub.item_terms(theta, b_i, a_i)
        step = torch.ones_like(b_i)
        for _ in range(30):  # per-item backtracking
            trial = sub.item_terms(theta, b_i + step * db, a_i + step * dalpha if two_pl else a_i)
            worse = ~(trial >= current - 1e-12 * current.abs())  # NaN (overflow) counts as worse
            if not bool(worse.any()):
                break
            step = torch.where(worse, step / 2, step)
        b[idx] = b_i + step * db
        if two_pl:
            alpha[idx] = a_i + step * dalpha
        moved = torch.maximum((step * db).abs(), (step * dalpha).abs())
        active[idx] = moved >= tol
    return b, alpha, it, not bool(active.any())


def fit_items(responses, theta, model: str = "1pl", prior_sd: float = 1.0, iterations: int = 100,
              tol: float = 1e-8, device: str = "cpu") -> IRTFit:
    """Item parameters given fixed abilities ``theta`` [n_subjects]: a MAP fit per item, all items
    at once. Each item stops on its own when its step is under ``tol``, so an item's result does
    not depend on which other items share the call."""
    import torch

    two_pl = _check_model(model) == "2pl"
    y, m = _tensors(responses, device)
    theta_t = torch.as_tensor(np.asarray(theta, dtype=np.float64), device=y.device)
    if theta_t.shape != (y.shape[0],):
        raise ValueError(f"theta has {tuple(theta_t.shape)} values for {y.shape[0]} subjects")
    post = _Posterior(y, m, two_pl, prior_sd)
    b, alpha, it, converged = _items_given_theta(y, m, theta_t, two_pl, prior_sd, iterations, tol)
    return _result(post, theta_t, b, alpha, it, converged)


def _result(post: _Posterior, theta, b, alpha, iterations: int, converged: bool) -> IRTFit:
    import torch

    se_b, se_a = _observed_item_se(post, theta, b, alpha)
    se_theta = post.pieces(theta, b, alpha)["f_tt"].rsqrt()  # observed = expected information for theta
    a = alpha.exp() if post.two_pl else torch.ones_like(b)
    return IRTFit(b=_np(b), a=_np(a), theta=_np(theta), se_b=_np(se_b), se_a=_np(se_a), se_theta=_np(se_theta),
                  model="2pl" if post.two_pl else "1pl", iterations=iterations, converged=converged,
                  log_posterior=post.total(theta, b, alpha))


def estimate_theta(responses, b, a=None, prior_sd: float = 1.0, iterations: int = 100,
                   tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """MAP abilities (N(0, prior_sd^2) prior) given fixed items: (theta, se) for each row of
    ``responses`` ([n_subjects, n_items], or one subject's [n_items]). Newton on a concave
    objective, so it converges from 0 in a few steps; a subject with no answers gets the prior."""
    import torch

    r = np.asarray(responses, dtype=np.float64)
    single = r.ndim == 1
    y, m = _tensors(r[None] if single else r, "cpu")
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float64))
    a_t = torch.ones_like(b_t) if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))
    if b_t.shape != (y.shape[1],) or a_t.shape != b_t.shape:
        raise ValueError(f"b (and a) must have one value per item ({y.shape[1]})")
    var = prior_sd ** 2
    theta = torch.zeros(y.shape[0], dtype=y.dtype)
    for _ in range(iterations):
        p = torch.sigmoid(a_t * (theta[:, None] - b_t))
        grad = (m * (y - p) * a_t).sum(1) - theta / var
        info = (m * p * (1 - p) * a_t.square()).sum(1) + 1 / var
        step = (grad / info).clamp(-2.0, 2.0)  # damped: far from the optimum a full step can overshoot
        theta = theta + step
        if float(step.abs().max()) < tol:
            break
    p = torch.sigmoid(a_t * (theta[:, None] - b_t))
    se = ((m * p * (1 - p) * a_t.square()).sum(1) + 1 / var).rsqrt()
    theta_np, se_np = _np(theta), _np(se)
    return (theta_np[0], se_np[0]) if single else (theta_np, se_np)


def loss_answers(losses, threshold: float) -> np.ndarray:
    """Right/wrong answers from losses, as IRT's LM crowd answers and a curriculum's probe is
    judged: 1 where the loss is under the threshold, 0 where not, NaN where there is no loss."""
    losses = np.asarray(losses, dtype=np.float64)  # float32 losses compare with the threshold exactly
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(losses), (losses < threshold).astype(np.float64), np.nan)


def _standardized(theta):
    sd = theta.std()
    return (theta - theta.mean()) / (sd if float(sd) > 1e-12 else 1.0)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


__all__ = ["IRTFit", "MODELS", "fit_irt", "fit_items", "estimate_theta", "loss_answers"]
