"""GRPO's loss math in float32 (pure functions): group advantages, token log-probabilities, and the
clipped surrogate with an optional KL penalty to a reference policy.

Axis legend: P prompts, G generations per prompt (a group), B = P * G sequences (row b = p * G + g,
generation g of prompt p: rewards.reshape(-1) order), T completion time, V vocab. mask [B, T] is
nonzero on the completion tokens that are scored (not on the prompt, not on padding).

Group advantages, rewards R [P, G] (population std, ddof=0: defined for G = 1, and a scaled group
has unit variance up to eps; a sample std, ddof=1, would scale A by sqrt((G - 1) / G)):

    mean_p = 1/G sum_g R[p, g]         std_p = sqrt(1/G sum_g (R[p, g] - mean_p)^2)
    A[p, g] = (R[p, g] - mean_p) / (std_p + eps)     scale=True (GRPO)
    A[p, g] =  R[p, g] - mean_p                      scale=False (Dr. GRPO)

A group whose rewards are all equal gets exactly 0 (no signal, no rounding noise).

Per token, with logp / old_logp / ref_logp the log-probabilities of the sampled token under the
policy being trained, the policy that sampled it, and the reference policy, and A_b the advantage of
its sequence:

    r[b, t]  = exp(logp - old_logp)
    s[b, t]  = -min(r A_b, clip(r, 1 - epsilon, 1 + epsilon_high) A_b)          clipped surrogate
    k3[b, t] = exp(ref_logp - logp) - (ref_logp - logp) - 1   (>= 0, unbiased KL(pi || ref) estimate)
    l[b, t]  = s[b, t] + beta k3[b, t]

    loss = sum_{b, t} w[b, t] l[b, t]

with m = (mask != 0), n_b = sum_t m[b, t] (tokens of sequence b), N = sum_b n_b, S = the number of
sequences with n_b > 0, and the weights w of the normalization:

    "token"     w = m / N            every scored token of the batch weighs the same (DAPO)
    "sequence"  w = m / (n_b S)      mean over sequences of each one's token mean (the original GRPO)
    "constant"  w = m / (B T)        a fixed denominator (Dr. GRPO: T the generation budget, B rows)

A sequence (or batch) without scored tokens contributes 0 and no NaN: the denominators are clamped
to 1, and for "sequence" an empty row does not count in S (padding rows leave the loss unchanged).
Masked-out positions may hold anything finite or not: their log-ratios are zeroed before exp.

One iteration per batch (old_logp = stop_gradient(logp)) gives r = 1, loss = -sum w A_b (+ beta sum
w k3), and the gradient of REINFORCE with the group mean as baseline:

    grad loss = -sum_{b, t} w[b, t] (A_b - beta (1 - exp(ref_logp - logp))) grad logp[b, t]

The clip is active on a token when (A_b > 0 and r > 1 + epsilon_high) or (A_b < 0 and r < 1 -
epsilon): the clipped term is the smaller one and it is constant, so the token gets no gradient from s.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from r1jax.models.losses import shifted_targets, token_logprobs, token_nll

NORMALIZATIONS = ("token", "sequence", "constant")


def group_advantages(rewards: jnp.ndarray, scale: bool = True, eps: float = 1e-4) -> jnp.ndarray:
    """Each reward minus its group's mean, over the group's population std + eps when `scale`:
    rewards [P, G] -> advantages [P, G] float32 (0 for a group of equal rewards)."""
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards: expected [P, G] (prompts x generations), got shape {rewards.shape}")
    if eps < 0:
        raise ValueError(f"eps={eps}: must be >= 0")
    r = rewards.astype(jnp.float32)
    mean = r.mean(axis=1, keepdims=True)
    centered = r - mean
    flat = (r == r[:, :1]).all(axis=1, keepdims=True)
    centered = jnp.where(flat, 0.0, centered)
    if not scale:
        return centered
    std = jnp.sqrt(jnp.mean(centered * centered, axis=1, keepdims=True))
    return jnp.where(flat, 0.0, centered / (std + eps))


def sequence_logprobs(logits: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
    """log softmax(logits[b, t])[tokens[b, t]]: logits [B, T, V], tokens [B, T] -> [B, T] float32.

    The logits at position t score tokens[t]: the caller aligns them (for a causal model, the logits
    of the position before each completion token, i.e. logits[:, :-1] against tokens[:, 1:]).
    """
    if logits.ndim != 3:
        raise ValueError(f"logits: expected [B, T, V], got shape {logits.shape}")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens: expected shape {logits.shape[:2]} (logits' [B, T]), got {tokens.shape}")
    return -token_nll(logits, tokens)


def _check_like(name: str, x, shape) -> None:
    if x.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (logp's [B, T]), got {x.shape}")


def token_weights(mask: jnp.ndarray, normalize: str = "token") -> jnp.ndarray:
    """The normalization's weights w (module docstring): mask [B, T] -> [B, T] float32, 0 off the mask.
    "token" and "sequence" sum to 1 when any token is scored (to 0 otherwise)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: choose one of {NORMALIZATIONS}")
    m = (mask != 0).astype(jnp.float32)
    if normalize == "token":
        return m / jnp.maximum(m.sum(), 1.0)
    if normalize == "constant":
        return m / float(m.shape[0] * m.shape[1])
    n = m.sum(axis=1, keepdims=True)  # [B, 1]
    seqs = (n > 0).astype(jnp.float32).sum()
    return m / (jnp.maximum(n, 1.0) * jnp.maximum(seqs, 1.0))


def kl_k3(logp: jnp.ndarray, ref_logp: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """k3 = exp(ref - logp) - (ref - logp) - 1 per token: [B, T] x3 -> [B, T] float32, 0 off the mask."""
    on = mask != 0
    d = jnp.where(on, ref_logp.astype(jnp.float32) - logp.astype(jnp.float32), 0.0)
    return jnp.expm1(d) - d


def clipped_surrogate(logp, old_logp, advantages, mask, epsilon: float = 0.2,
                      epsilon_high: float | None = None):
    """s = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) per token, with r = exp(logp - old_logp):
    logp, old_logp, mask [B, T], advantages [B] -> (s [B, T], r [B, T], clipped_low [B, T] bool,
    clipped_high [B, T] bool), all 0 / False off the mask (r is 1 there).

    clipped_low: A < 0 and r < 1 - epsilon; clipped_high: A > 0 and r > 1 + epsilon_high (the tokens
    whose clipped term is chosen and differs from r A).
    """
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    on = mask != 0
    log_ratio = jnp.where(on, logp.astype(jnp.float32) - old_logp.astype(jnp.float32), 0.0)
    ratio = jnp.exp(log_ratio)
    a = advantages.astype(jnp.float32)[:, None]
    s = -jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_hi) * a)
    s = jnp.where(on, s, 0.0)
    low = on & (a < 0) & (ratio < 1.0 - epsilon)
    high = on & (a > 0) & (ratio > 1.0 + eps_hi)
    return s, ratio, low, high


def grpo_loss(logp, old_logp, advantages, mask, *, epsilon: float = 0.2,
              epsilon_high: float | None = None, beta: float = 0.0, ref_logp=None,
              normalize: str = "token"):
    """The GRPO loss (module docstring): logp, old_logp, mask [B, T], advantages [B], ref_logp [B, T]
    or None -> (loss [] float32, metrics).

    epsilon, epsilon_high, beta and normalize are Python values (static under jax.jit); epsilon_high
    defaults to epsilon (a symmetric clip); beta > 0 needs ref_logp. Metrics, float32
    scalars over the scored tokens (0 when there are none): "kl" (mean k3; 0 without ref_logp),
    "clip_fraction" (share of tokens whose clip is active), "clip_low_fraction" and
    "clip_high_fraction" (its two sides), "ratio_mean" (mean r).
    """
    if logp.ndim != 2:
        raise ValueError(f"logp: expected [B, T], got shape {logp.shape}")
    shape = logp.shape
    _check_like("old_logp", old_logp, shape)
    _check_like("mask", mask, shape)
    if advantages.shape != shape[:1]:
        raise ValueError(f"advantages: expected shape {shape[:1]} (one per sequence of logp's [B, T]; "
                         f"group_advantages' [P, G] reshaped to [-1]), got {advantages.shape}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: choose one of {NORMALIZATIONS}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon={epsilon}: must be >= 0")
    if epsilon_high is not None and not epsilon_high >= 0:
        raise ValueError(f"epsilon_high={epsilon_high}: must be >= 0 (or None for epsilon)")
    if not beta >= 0:
        raise ValueError(f"beta={beta}: must be >= 0")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (the reference policy's log-probabilities)")
    if ref_logp is not None:
        _check_like("ref_logp", ref_logp, shape)

    s, ratio, low, high = clipped_surrogate(logp, old_logp, advantages, mask, epsilon, epsilon_high)
    k3 = kl_k3(logp, ref_logp, mask) if ref_logp is not None else jnp.zeros(shape, jnp.float32)
    per_token = s + beta * k3 if beta > 0 else s
    loss = jnp.sum(token_weights(mask, normalize) * per_token)

    m = (mask != 0).astype(jnp.float32)
    count = jnp.maximum(m.sum(), 1.0)

    def mean(x):
        return jnp.sum(x.astype(jnp.float32) * m) / count

    metrics = {"kl": mean(k3), "clip_fraction": mean(low | high), "clip_low_fraction": mean(low),
               "clip_high_fraction": mean(high), "ratio_mean": mean(ratio)}
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class GRPO:
    """The GRPO objective of the training step (r1jax/train/objectives/__init__.py; the batch layout
    in the module docstring). on_policy (one optimizer pass per batch of rollouts): old_logp is
    stop_gradient(logp), r = 1, and the batch needs no `old_logp`; beta > 0 needs `ref_logp`."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    normalize: str = "token"
    temperature: float = 1.0
    on_policy: bool = True
    budget: int = 0        # the generation budget: "constant"'s T in w = m / (B T); 0 = the batch's T
    completion_start: int = 0  # > 0: every row's completion starts at this column (rollouts' layout),
                               # so the LM head runs on the `budget` positions from it-1 only

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r}: choose one of {NORMALIZATIONS}")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")

    @property
    def fields(self) -> tuple[str, ...]:
        return (("loss_mask", "advantages") + (() if self.on_policy else ("old_logp",))
                + (("ref_logp",) if self.beta > 0 else ()))

    @staticmethod
    def target_mask(batch) -> jnp.ndarray:
        """[B, T] bool: position t scores tokens[t + 1], a completion token of the same row."""
        return shifted_targets(batch["tokens"], batch["segment_ids"], 1, batch["loss_mask"])[1]

    def prepare(self, batch):
        m = self.target_mask(batch)
        if self.normalize == "constant" and self.budget:
            w = m.astype(jnp.float32) / float(m.shape[0] * self.budget)
        else:
            w = token_weights(m, self.normalize)
        return {**batch, "weights": w}, {"tokens": jnp.maximum(m.sum(), 1.0)}

    def window(self, t: int) -> slice:
        """The target positions the head is computed on: [completion_start - 1, + budget) when the
        layout fixes the completions' start, else all t."""
        if self.completion_start and self.budget:
            return slice(self.completion_start - 1, min(t, self.completion_start - 1 + self.budget))
        return slice(0, t)

    def loss(self, model, h, batch, sc, norms):
        targets, m = shifted_targets(batch["tokens"], batch["segment_ids"], 1, batch["loss_mask"])
        w = self.window(targets.shape[1])
        batch = {k: v[:, w] for k, v in batch.items()}
        h, targets, m = h[:, w], targets[:, w], m[:, w]
        logp, entropy = token_logprobs(h, model.head_weight(), targets, self.temperature, sc.loss_chunk)
        old = jax.lax.stop_gradient(logp) if self.on_policy else batch["old_logp"]
        s, ratio, low, high = clipped_surrogate(logp, old, batch["advantages"][:, 0], m,
                                                self.epsilon, self.epsilon_high)
        mf = m.astype(jnp.float32)
        per_token = s
        sums = {}
        if self.beta > 0:
            k3 = kl_k3(logp, batch["ref_logp"], m)
            per_token = s + self.beta * k3
            sums["kl"] = jnp.sum(k3 * mf)
        value = jnp.sum(batch["weights"] * per_token)
        sums.update(objective=value, tokens=mf.sum(), clip_low=jnp.sum(low * mf),
                    clip_high=jnp.sum(high * mf), ratio=jnp.sum(jnp.where(m, ratio, 0.0)),
                    entropy=jnp.sum(jnp.where(m, entropy, 0.0)))
        return value, sums

    def metrics(self, sums, norms):
        n = jnp.maximum(sums["tokens"], 1.0)
        out = {"loss": sums["objective"], "tokens": sums["tokens"],
               "clip_fraction": (sums["clip_low"] + sums["clip_high"]) / n,
               "clip_low_fraction": sums["clip_low"] / n, "clip_high_fraction": sums["clip_high"] / n,
               "ratio_mean": sums["ratio"] / n, "entropy": sums["entropy"] / n}
        if "kl" in sums:
            out["kl"] = sums["kl"] / n
        return out


def policy_logprobs(model, batch, temperature: float = 1.0, chunk: int = 0, window: slice | None = None
                    ) -> jnp.ndarray:
    """The log-probabilities of a batch's next tokens under `model` at `temperature`, aligned as the
    objective's old_logp / ref_logp: batch of [B, T] tokens, positions, segment_ids -> [B, T] float32
    (position t: log p(tokens[t + 1]); 0 at a row's last position, and outside `window`, the target
    positions computed (GRPO.window; None = all))."""
    h, _ = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    targets, m = shifted_targets(batch["tokens"], batch["segment_ids"], 1)
    w = window or slice(0, targets.shape[1])
    logp, _ = token_logprobs(h[:, w], model.head_weight(), targets[:, w], temperature, chunk)
    return jnp.zeros(targets.shape, jnp.float32).at[:, w].set(jnp.where(m[:, w], logp, 0.0))
