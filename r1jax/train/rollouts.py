"""GRPO's data side: each step's prompts, their sampled groups, rewards, advantages and the batch.

    rollouts = Rollouts(train_rows, val_rows, tokenizer, settings, seed=c.seed, seq_len=T, ...)
    batch, info, records = rollouts.sample(model, step, logprob_fns)   # one training step's batch
    metrics, records = rollouts.validate(model)                        # val/reward, val/pass_rate

Prompts. Step s (0-based) takes P = prompts_per_step prompts: slots s*P ... s*P + P - 1 of an
endless sequence that visits the N training prompts in a fresh seeded permutation every epoch (epoch
e: numpy default_rng([seed, e]).permutation(N)). The order is a function of (seed, step) only, so a
resumed run samples exactly what an uninterrupted one would have.

Sampling. The G = num_generations copies of prompt p are rows p*G + g of one
r1jax.inference.generate.generate_ids call on the run's mesh, from the current policy, at
`temperature` / `top_p`, for at most max_new_tokens tokens; its keys come from rollout_seed(seed,
step) and the row (r1jax/inference/sampling.py), so a step's rollouts are reproducible from the seed.

Rewards and advantages. Completions are scored with r1jax.eval.rewards.score (weighted sum of the
named reward functions; a user function that raises or returns a non-number scores 0 for that item,
is counted in info["problems"], and the step goes on). Advantages are group-relative
(objectives/grpo.py group_advantages: reward minus the group mean, over the group std when
scale_rewards). While the host scores, the device already computes the rollouts' old (iterations >
1) and reference (beta > 0) log-probabilities: both were dispatched before scoring began.

Several processes (multi-host): generation runs on the run's mesh across all of them and every
process receives every completion; each process scores its contiguous share of the rows
(r1jax/parallel/distributed.py my_share) in its own workers, and the rewards are gathered bit for
bit, so the advantages, the batch (each process places its own devices' rows), the metrics and the
records are the same on every process; process 0 writes them.

Batch. Row b is prompt ids + completion ids (EOS included when generated) in seq_len columns, the
prompt left-padded so that every completion starts at column S = seq_len - max_new_tokens (the
prompt budget: prompts are prepared with it): tokens, positions (0, 1, ... from the prompt's first
token), segment_ids (1 on the row's tokens, 0 on padding), loss_mask (1 on the completion),
advantages (the row's A on every position), and old_logp / ref_logp as the GRPO objective reads
them (objectives/grpo.py, whose `completion_start` = S lets the LM head skip the prompt columns).

Validation: one pass over the val prompts (val_samples each) at val_temperature (0.6, R1's setting)
and top_p 0.95 with a fixed seed, so every eval is comparable: val/reward (mean total reward),
val/pass_rate (share of samples whose first reward function, the verifier, scores >= 1),
val/reward/<function>, val/completion/length, val/completion/truncated.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from r1jax.data.chat import prompt_ids
from r1jax.data.errors import DataError
from r1jax.eval import rewards as rewards_lib
from r1jax.inference.generate import GenerationSettings, eos_ids_of, generate_ids, prompt_example
from r1jax.parallel import distributed
from r1jax.train.objectives.grpo import group_advantages

VAL_TOP_P = 0.95


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """The config's `grpo` section as the rollouts use it (r1jax/train/run_config.py)."""
    prompts_per_step: int = 8
    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    rewards: str = "boxed:1.0,format:0.2"
    scale_rewards: bool = True
    beta: float = 0.0
    iterations: int = 1
    val_temperature: float = 0.6
    val_samples: int = 1
    workers: int = 0


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of training step `step`'s rollouts (validation uses val_seed(seed)):
    distinct per step, a function of (seed, step) only."""
    return (seed * 1_000_003 + 1 + step) % (2**31 - 1)


def val_seed(seed: int) -> int:
    return (seed * 1_000_003) % (2**31 - 1)


def prompt_indices(step: int, per_step: int, n: int, seed: int) -> list[int]:
    """The indices (into the N training prompts) of step `step`'s prompts: module docstring."""
    out, cache = [], {}
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(slot, n)
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(cache[epoch][k]))
    return out


def steps_per_epoch(n: int, per_step: int) -> int:
    return -(-n // per_step)


class Rollouts:
    """The prompts of a GRPO run, tokenized once, and what each step samples from them."""

    def __init__(self, train_rows: list[dict], val_rows: list[dict], tokenizer, settings: RolloutSettings, *,
                 seed: int, seq_len: int, mesh=None, meta_dir: str | None = None, log=print):
        self.s, self.seed, self.seq_len, self.mesh, self.log = settings, seed, seq_len, mesh, log
        self.train_rows, self.val_rows = train_rows, val_rows
        self.tokenizer = tokenizer
        self.eos = eos_ids_of(tokenizer, meta_dir)
        self.rewards = rewards_lib.parse_rewards(settings.rewards)
        budget = seq_len - settings.max_new_tokens
        self.train_ids = [self._ids(r, budget) for r in train_rows]
        self.val_ids = [self._ids(r, budget) for r in val_rows]

    def _ids(self, row: dict, budget: int) -> list[int]:
        where = row.get("source", "a prompt row")
        ids = prompt_ids(prompt_example(row["messages"], where), self.tokenizer)
        if len(ids) > budget:
            raise DataError(f"{where}: prompt of {len(ids)} tokens > train.seq_len - grpo.max_new_tokens "
                            f"= {budget}")
        return ids

    def _detok(self, ids: list[int]) -> str:
        ids = [t for t in ids if t not in self.eos]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _generate(self, model, prompts: list[list[int]], temperature: float, top_p: float, seed: int):
        settings = GenerationSettings(max_new_tokens=self.s.max_new_tokens, temperature=temperature,
                                      top_p=top_p, seed=seed, batch_size=len(prompts))
        out = generate_ids(model, prompts, settings, eos_token_ids=self.eos, mesh=self.mesh,
                           detokenize=self._detok)
        return [rewards_lib.Completion(o["text"], len(o["tokens"]), o["finish_reason"] == "length")
                for o in out], [o["tokens"] for o in out]

    def _score(self, comps, rows) -> rewards_lib.Scores:
        """Every completion's rewards, on every process: each process scores its share
        (distributed.my_share) in its own workers, and the values are gathered."""
        mine = distributed.my_share(len(comps))
        local = rewards_lib.score([comps[i] for i in mine], [rows[i] for i in mine],
                                  [rows[i]["messages"] for i in mine], self.rewards, workers=self.s.workers)
        scores = _gathered(local, len(comps))
        for name, n in scores.problems.items():
            if n:
                first = scores.errors.get(name, "the first was on another process")
                self.log(f"reward {name}: {n} of {len(comps)} completions raised or returned a "
                         f"non-number (scored 0): {first}")
        return scores

    @property
    def completion_start(self) -> int:
        """The column every completion starts at: prompts are left-padded to seq_len - max_new_tokens."""
        return self.seq_len - self.s.max_new_tokens

    def batch_arrays(self, prompts: list[list[int]], completions: list[list[int]],
                     advantages: np.ndarray) -> dict[str, np.ndarray]:
        """The [B, seq_len] training arrays of B rollouts (module docstring), without log-probs."""
        b, t, start = len(prompts), self.seq_len, self.completion_start
        out = {k: np.zeros((b, t), np.int32) for k in ("tokens", "positions", "segment_ids", "loss_mask")}
        for i, (p, c) in enumerate(zip(prompts, completions)):
            first, end = start - len(p), start + len(c)
            out["tokens"][i, first:end] = list(p) + list(c)
            out["positions"][i, first:end] = np.arange(end - first)
            out["segment_ids"][i, first:end] = 1
            out["loss_mask"][i, start:end] = 1
        out["advantages"] = np.repeat(np.asarray(advantages, np.float32)[:, None], t, axis=1)
        return out

    def sample(self, model, step: int, place: Callable[[dict], dict],
               logprob_fns: dict[str, Callable[[dict], Any]]):
        """Step `step`'s batch: (batch of global arrays, info metrics, per-rollout records).

        place: numpy [B, T] arrays -> the step's global arrays; logprob_fns: {"old_logp" /
        "ref_logp": placed batch -> [B, T] device array}, dispatched before scoring (module docstring)."""
        s = self.s
        idx = prompt_indices(step, s.prompts_per_step, len(self.train_rows), self.seed)
        prompts = [self.train_ids[i] for i in idx for _ in range(s.num_generations)]
        rows = [self.train_rows[i] for i in idx for _ in range(s.num_generations)]
        t0 = time.perf_counter()
        comps, tokens = self._generate(model, prompts, s.temperature, s.top_p, rollout_seed(self.seed, step))
        t1 = time.perf_counter()
        arrays = self.batch_arrays(prompts, tokens, np.zeros(len(prompts), np.float32))
        placed = place({k: v for k, v in arrays.items() if k != "advantages"})
        extra = {name: fn(placed) for name, fn in logprob_fns.items()}  # async: runs while we score
        t2 = time.perf_counter()
        scores = self._score(comps, rows)
        totals = np.asarray(scores.totals, np.float64).reshape(s.prompts_per_step, s.num_generations)
        adv = np.asarray(group_advantages(totals, scale=s.scale_rewards)).reshape(-1)
        t3 = time.perf_counter()
        batch = {**placed, **place({"advantages": np.repeat(adv[:, None].astype(np.float32), self.seq_len, 1)}),
                 **extra}
        info = _summary("reward", "completion", scores, comps, self.rewards)
        info["reward/zero_std_groups"] = float(np.mean(totals.max(1) == totals.min(1)))
        info["time/rollout_s"], info["time/score_s"] = t1 - t0, t3 - t2
        records = [{"step": step + 1, "prompt_index": idx[k // s.num_generations],
                    "source": rows[k].get("source"), "generation": k % s.num_generations,
                    "completion": comps[k].text, "n_tokens": comps[k].num_tokens,
                    "truncated": comps[k].truncated, "reward": scores.totals[k],
                    "rewards": {n: v[k] for n, v in scores.per_function.items()}, "advantage": float(adv[k])}
                   for k in range(len(comps))]
        return batch, info, records

    def validate(self, model) -> tuple[dict, list[dict]]:
        """val/* metrics and per-sample records of `model` on the val prompts (module docstring)."""
        n = self.s.val_samples
        prompts = [ids for ids in self.val_ids for _ in range(n)]
        rows = [r for r in self.val_rows for _ in range(n)]
        comps, _ = self._generate(model, prompts, self.s.val_temperature, VAL_TOP_P, val_seed(self.seed))
        scores = self._score(comps, rows)
        metrics = _summary("val/reward", "val/completion", scores, comps, self.rewards)
        metrics["val/reward"] = metrics.pop("val/reward/mean")
        metrics.pop("val/reward/std")
        verifier = self.rewards[0][0]
        metrics["val/pass_rate"] = float(np.mean(np.asarray(scores.per_function[verifier]) >= 1.0))
        records = [{"source": rows[k].get("source"), "sample": k % n, "completion": comps[k].text,
                    "n_tokens": comps[k].num_tokens, "reward": scores.totals[k],
                    "rewards": {name: v[k] for name, v in scores.per_function.items()}}
                   for k in range(len(comps))]
        return metrics, records


def _gathered(local: rewards_lib.Scores, n: int) -> rewards_lib.Scores:
    """The Scores of all n completions from this process's (its my_share(n) items): totals and values
    gathered bit for bit, problem counts summed; error messages stay those of this process's items."""
    if jax.process_count() == 1:
        return local
    names = list(local.per_function)
    values = np.array([local.totals] + [local.per_function[k] for k in names], np.float64).T  # [mine, 1 + F]
    values = distributed.gather_rows(values, n)                                 # [n, 1 + F]
    counts = np.array([[local.problems[k] for k in names]], np.int64)           # [1, F]
    counts = distributed.gather_rows(counts, jax.process_count()).sum(0)        # [F]
    return rewards_lib.Scores(values[:, 0].tolist(), {k: values[:, 1 + j].tolist() for j, k in enumerate(names)},
                              {k: int(counts[j]) for j, k in enumerate(names)}, local.errors)


def _summary(reward: str, completion: str, scores: rewards_lib.Scores, comps, spec) -> dict:
    """{reward/mean, reward/std, reward/<fn>, reward/problems/<fn> (when any), completion/length,
    completion/truncated} of scored completions (prefixes `reward` and `completion`)."""
    totals = np.asarray(scores.totals, np.float64)
    out = {f"{reward}/mean": float(totals.mean()), f"{reward}/std": float(totals.std())}
    for name, values in scores.per_function.items():
        out[f"{reward}/{name}"] = float(np.mean(values))
        if scores.problems.get(name):
            out[f"{reward}/problems/{name}"] = scores.problems[name]
    out[f"{completion}/length"] = float(np.mean([c.num_tokens for c in comps]))
    out[f"{completion}/truncated"] = float(np.mean([c.truncated for c in comps]))
    return out


def check_rows(rows: list[dict], spec: str) -> None:
    """Every prompt row has the fields the rewards of `spec` read (answer / tests: a non-empty
    string); else a RewardDataError naming the row's source and the reward (before any sampling)."""
    for field, reward in rewards_lib.required_fields(spec).items():
        for row in rows:
            v = row.get(field)
            if not isinstance(v, str) or not v.strip():
                got = "missing" if v is None else f"{type(v).__name__} {v!r:.40}"
                raise rewards_lib.RewardDataError(
                    f"{row.get('source', 'a prompt row')}: field {field!r} ({got}) must be a non-empty "
                    f"string: reward {reward} reads it (grpo.rewards)")
