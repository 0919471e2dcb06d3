"""Time twinv2's vectorised GAUC / AUC / log loss against the slow scikit-learn reference.

Usage:
    python benchmarks/metrics_speed.py [--impressions 10_000_000] [--users 100_000]
        [--reference-users 5_000] [--decimals 3] [--repeats 3] [--seed 0] [--out FILE.json]

Data: impressions spread over users with a log-normal activity (a few heavy users, many light ones),
labels drawn from a latent affinity, float32 scores of a noisy model rounded to ``--decimals`` decimals so
that ties are common.

Timing policy, the same for both sides and every metric: one untimed warm-up call each (imports, first
touch of memory, caches), then ``--repeats`` rounds of one timed call each, alternating; the figure is the
median (the minimum is kept too).

GAUC: the reference (one ``roc_auc_score`` call per user) is slow, so both implementations are measured on
the same random subset of ``--reference-users`` users (``--reference-users 0``: every user): that is the
like-for-like comparison and its ``subset_speedup`` is the headline. Ours is also measured on the full
data; the reference's full-data time is that subset time scaled linearly by users, an extrapolation
(``reference_extrapolated`` says so; it is exact when the subset is every user). Global AUC and log loss
are compared with one scikit-learn call each on the full data. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from twinv2._io import write_json_atomic
from twinv2.train.metrics import auc, gauc, log_loss, per_user_auc, reference_gauc, reference_per_user_auc


def make_impressions(impressions: int, users: int, decimals: int, seed: int):
    """Synthetic evaluation data: ``(user_ids int64 (N,), labels int8 (N,), scores float32 (N,))``."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=users)
    user_ids = rng.choice(users, size=impressions, p=activity / activity.sum())
    user_bias = rng.normal(-1.0, 0.7, size=users)  # per-user click propensity: GAUC differs from AUC
    affinity = rng.normal(size=impressions).astype(np.float32)
    click_logit = user_bias[user_ids].astype(np.float32) + affinity
    labels = (rng.random(impressions, dtype=np.float32) < 1 / (1 + np.exp(-click_logit))).astype(np.int8)
    model_logit = 0.8 * affinity + rng.normal(size=impressions).astype(np.float32) - 1.0
    scores = np.round(1 / (1 + np.exp(-model_logit)), decimals).astype(np.float32)
    return user_ids, labels, scores


def timed(*fns: Callable[[], Any], repeats: int) -> list[tuple[dict[str, Any], Any]]:
    """One untimed warm-up call of each function, then ``repeats`` rounds of one timed call of each,
    alternating (a change of load on a shared machine hits both sides alike). Per function:
    ``({"median_s", "min_s", "runs_s"}, last result)``.

    Both sides of every comparison go through this together, so neither is timed cold or best-of-fewer."""
    results = [fn() for fn in fns]  # warm-up: imports, first touch of memory, library caches
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [({"median_s": float(np.median(t)), "min_s": min(t), "runs_s": t}, r)
            for t, r in zip(times, results, strict=True)]


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    console.log(f"generating {args.impressions:,} impressions over {args.users:,} users (seed {args.seed})")
    user_ids, labels, scores = make_impressions(args.impressions, args.users, args.decimals, args.seed)
    probs = scores.astype(np.float64)
    users_present = int(np.unique(user_ids).shape[0])

    policy = f"warm-up, then median of {args.repeats} alternating runs"
    console.log(f"ours: gauc on all users, {policy}")
    ((ours_t, ours),) = timed(lambda: gauc(user_ids, labels, scores), repeats=args.repeats)
    tracemalloc.start()
    gauc(user_ids, labels, scores)
    ours_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    rng = np.random.default_rng(args.seed + 1)
    present = np.unique(user_ids)
    if 0 < args.reference_users < users_present:
        chosen = rng.choice(present, size=args.reference_users, replace=False)
        rows = np.isin(user_ids, chosen)
    else:
        chosen, rows = present, np.ones(len(user_ids), dtype=bool)
    sub_users, sub_labels, sub_scores = user_ids[rows], labels[rows], scores[rows]
    extrapolated = len(chosen) < users_present
    console.log(f"GAUC on the same {len(chosen):,} users ({int(rows.sum()):,} impressions), both sides: {policy}")
    (ours_sub_t, ours_sub), (ref_sub_t, reference_sub) = timed(
        lambda: gauc(sub_users, sub_labels, sub_scores), lambda: reference_gauc(sub_users, sub_labels, sub_scores),
        repeats=args.repeats)
    reference_s = ref_sub_t["median_s"] * users_present / len(chosen)

    fast_users = per_user_auc(sub_users, sub_labels, sub_scores)
    slow_users = reference_per_user_auc(sub_users, sub_labels, sub_scores)
    both = ~np.isnan(slow_users.auc)
    per_user_diff = float(np.max(np.abs(fast_users.auc[both] - slow_users.auc[both])))
    gauc_diff = abs(ours_sub.gauc - reference_sub.gauc)
    counts_agree = (ours_sub.users, ours_sub.impressions, ours_sub.users_skipped) == (
        reference_sub.users,
        reference_sub.impressions,
        reference_sub.users_skipped,
    )

    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    console.log(f"global AUC and log loss on all impressions: ours vs one scikit-learn call each, {policy}")
    (auc_ours_t, auc_ours), (auc_ref_t, auc_ref) = timed(
        lambda: auc(labels, scores), lambda: roc_auc_score(labels, scores), repeats=args.repeats)
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)  # sklearn >= 1.5 clips at float eps; give it our clipping
    (ll_ours_t, ll_ours), (ll_ref_t, ll_ref) = timed(
        lambda: log_loss(labels, probs), lambda: sk_log_loss(labels, clipped), repeats=args.repeats)

    return {
        "impressions": args.impressions,
        "users": args.users,
        "users_present": users_present,
        "score_decimals": args.decimals,
        "seed": args.seed,
        "repeats": args.repeats,
        "timing_policy": f"both sides: one untimed warm-up call each, then {args.repeats} alternating timed calls "
                         "each; median (min kept)",
        "gauc": ours.gauc,
        "gauc_users": ours.users,
        "gauc_impressions": ours.impressions,
        "gauc_users_skipped": ours.users_skipped,
        "subset": {
            "users": len(chosen),
            "impressions": int(rows.sum()),
            "ours_s": ours_sub_t["median_s"],
            "ours_min_s": ours_sub_t["min_s"],
            "reference_s": ref_sub_t["median_s"],
            "reference_min_s": ref_sub_t["min_s"],
            "speedup": ref_sub_t["median_s"] / ours_sub_t["median_s"],
        },
        "subset_speedup": ref_sub_t["median_s"] / ours_sub_t["median_s"],
        "ours_s": ours_t["median_s"],
        "ours_min_s": ours_t["min_s"],
        "ours_peak_alloc_mb": ours_peak_mb,
        "reference_s": reference_s,
        "reference_extrapolated": extrapolated,
        "reference_note": (
            f"full-data reference time extrapolated: measured on {len(chosen)} random users ({int(rows.sum())} "
            f"impressions), median {ref_sub_t['median_s']:.3f} s, scaled linearly by users "
            f"({users_present}/{len(chosen)})"
            if extrapolated
            else "reference measured on all users"
        ),
        "reference_users": len(chosen),
        "reference_impressions": int(rows.sum()),
        "speedup": reference_s / ours_t["median_s"],
        "speedup_extrapolated": extrapolated,
        "max_abs_diff": max(per_user_diff, gauc_diff),
        "max_abs_diff_per_user_auc": per_user_diff,
        "abs_diff_gauc_subset": gauc_diff,
        "counts_agree_subset": counts_agree,
        "auc": {"ours_s": auc_ours_t["median_s"], "reference_s": auc_ref_t["median_s"],
                "ours_min_s": auc_ours_t["min_s"], "reference_min_s": auc_ref_t["min_s"],
                "speedup": auc_ref_t["median_s"] / auc_ours_t["median_s"], "value": auc_ours,
                "abs_diff": abs(auc_ours - auc_ref)},
        "log_loss": {"ours_s": ll_ours_t["median_s"], "reference_s": ll_ref_t["median_s"],
                     "ours_min_s": ll_ours_t["min_s"], "reference_min_s": ll_ref_t["min_s"],
                     "speedup": ll_ref_t["median_s"] / ll_ours_t["median_s"], "value": ll_ours,
                     "abs_diff": abs(ll_ours - ll_ref)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"metrics speed: {result['impressions']:,} impressions, {result['users_present']:,} users")
    for column in ("metric", "ours (s)", "reference (s)", "speedup", "max |diff|", "reference"):
        table.add_column(column, justify="left" if column in ("metric", "reference") else "right")
    sub = result["subset"]
    rows = [
        (f"GAUC, {sub['users']:,} users (both measured)", sub["ours_s"], sub["reference_s"], result["max_abs_diff"],
         "sklearn loop"),
        ("GAUC, all users", result["ours_s"], result["reference_s"], result["max_abs_diff"],
         "sklearn loop, extrapolated *" if result["reference_extrapolated"] else "sklearn loop"),
        ("AUC", result["auc"]["ours_s"], result["auc"]["reference_s"], result["auc"]["abs_diff"], "roc_auc_score"),
        (
            "log loss",
            result["log_loss"]["ours_s"],
            result["log_loss"]["reference_s"],
            result["log_loss"]["abs_diff"],
            "sklearn log_loss",
        ),
    ]
    for name, ours_s, ref_s, diff, note in rows:
        table.add_row(name, f"{ours_s:.3f}", f"{ref_s:.3f}", f"{ref_s / ours_s:.1f}x", f"{diff:.1e}", note)
    console.print(table)
    console.print(
        f"GAUC {result['gauc']:.6f} over {result['gauc_users']:,} users / {result['gauc_impressions']:,} "
        f"impressions ({result['gauc_users_skipped']:,} one-class users skipped); ours peak allocation "
        f"{result['ours_peak_alloc_mb']:.0f} MiB, process peak RSS {result['peak_rss_mb']:.0f} MiB"
    )
    console.print(f"timing: {result['timing_policy']}")
    if result["reference_extrapolated"]:
        console.print(f"* {result['reference_note']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--reference-users", type=int, default=5_000, help="users the slow reference runs on (0 = all)")
    parser.add_argument("--decimals", type=int, default=3, help="score rounding, creates ties")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.impressions < 1 or args.users < 1 or args.repeats < 1 or args.reference_users < 0:
        parser.error("--impressions, --users and --repeats must be >= 1, --reference-users >= 0")
    console = Console(width=120)
    result = run(args, console)
    print_table(result, console)
    if args.out:
        write_json_atomic(args.out, result)
        console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
