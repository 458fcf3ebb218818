"""A cohort's own calibration: a Dice threshold per organ fitted on a finished run's own scores, stored as a named
profile, and the run re-judged against it.

A study runs thousands of organs from one segmenter, nearly all usable. A bundle's shipped thresholds were set on
clean masks of its training source; another hospital's annotators or another segmenter move the whole Dice
distribution (smoother or rougher boundaries, other slice thickness), so a shipped threshold can flag too many
clean organs there or too few. The research pipeline flagged "the worst 5% of the cohort"; this is that rule made
robust and explicit:

1. Scores on a log scale, ``g = -log(1 - Dice)`` (clean Dice piles up just under 1; on this scale its spread is
   comparable across organs and its lower tail is not squeezed against 1).
2. Gross failures are set aside before the quantile is taken: organs more than :data:`GROSS_FAILURE_Z` robust
   standard deviations (1.4826 x the median absolute deviation) below the median. Of the shipped bundles' clean
   calibration organs one lies beyond it (kidney 0.2.0: a KiTS kidney with a large tumour and cyst, 6.0 / 7.2;
   docs/cohort_calibration.md), so on a clean cohort next to nothing is set aside and the rule flags about the
   target rate; a cohort with many gross failures no longer drags the threshold down to let them through.
3. The threshold is the k-th lowest of the rest, k = floor((n + 1) x ``target_rate``): organs below it are flagged,
   and every set-aside one. A new clean organ of the same kind falls below it with probability k / (n + 1), at most
   the target rate, whatever the distribution (an order statistic of exchangeable scores); in the cohort itself
   k - 1 of the rest are flagged.

The median/MAD rule with a normal quantile alone was measured and rejected: clean Dice has a heavier lower tail
than a normal, so a nominal 5% flagged 10-16% of clean organs on the shipped calibration sets.

``shapeqc calibrate --cohort OUT/`` runs :func:`calibrate_cohort`: under the run's lock it fits one profile per
(bundle, organ) with at least ``min_organs`` judged organs, writes ``OUT/cohort_calibration.json`` (profiles,
refusals, shipped vs cohort flag counts), keeps the run's records as they were in ``OUT/records_shipped.jsonl``
(first time only), and re-writes ``records.jsonl`` and the reports with every judged record judged against its
organ's cohort profile (the profile's ``name`` is on the record). Organs below ``min_organs`` keep the shipped
verdict, and the file says why.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from shapeqc.judging.analysis import implausible_reason, verdict
from shapeqc.outputs.records import record_json
from shapeqc.outputs.reports import write_atomic, write_reports
from shapeqc.runs.journal import OutputLock

# organs further below the cohort's median than this many robust standard deviations (log scale) are gross
# failures, set aside before the quantile (of the shipped calibration sets' clean organs, one lies beyond 6)
GROSS_FAILURE_Z = 6.0
# fewer judged organs than this give no cohort profile: the quantile of a handful of organs is noise
DEFAULT_MIN_ORGANS = 50
# 1 - Dice below this counts as this: a reconstruction equal to the mask (Dice 1) stays finite on the log scale
DICE_FLOOR = 1e-6
COHORT_FILE = "cohort_calibration.json"
SHIPPED_RECORDS = "records_shipped.jsonl"


def log_goodness(dice) -> np.ndarray:
    """``-log(1 - Dice)`` of an array of Dice values (higher is better), 1 - Dice floored at :data:`DICE_FLOOR`."""
    return -np.log(np.maximum(1.0 - np.asarray(dice, dtype=float), DICE_FLOOR))


def fit_cohort_threshold(dice_values, target_rate: float = 0.05) -> dict:
    """The cohort Dice threshold of the module's rule for ``dice_values`` (n,) of one organ.

    Returns:
        ``threshold`` (Dice; organs below it are flagged), ``organs`` (n), ``set_aside`` (gross failures, all
        flagged), ``median_dice``, ``robust_sd`` (log scale) and ``expected_flag_rate`` (the target rate among
        the rest plus the set-aside share).
    """
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"target_rate must lie in (0, 1), got {target_rate}")
    dice = np.asarray(dice_values, dtype=float)
    if dice.ndim != 1 or dice.size == 0 or not np.all(np.isfinite(dice)):
        raise ValueError("dice_values must be a non-empty 1-D array of finite Dice values")
    goodness = log_goodness(dice)
    median = float(np.median(goodness))
    robust_sd = 1.4826 * float(np.median(np.abs(goodness - median)))
    gross = goodness < median - GROSS_FAILURE_Z * robust_sd if robust_sd > 0 else np.zeros(dice.size, bool)
    kept = np.sort(goodness[~gross])
    # the k-th lowest score, k = floor((n + 1) rate): a new organ of the same kind falls below it with probability
    # k / (n + 1) <= rate (order statistics of exchangeable scores), whatever their distribution
    rank = max(1, math.floor((kept.size + 1) * target_rate))
    cut = float(kept[rank - 1])
    threshold = 1.0 - math.exp(-cut)
    return {"threshold": threshold, "organs": int(dice.size), "set_aside": int(gross.sum()),
            "median_dice": float(np.median(dice)), "robust_sd": robust_sd,
            "expected_flag_rate": float(np.mean(dice < threshold))}


def cohort_profile(name: str, fit: dict, target_rate: float, run: str) -> dict:
    """A threshold profile (the shape of a bundle's thresholds.json profiles) from :func:`fit_cohort_threshold`."""
    return {"name": f"cohort:{name}", "spacing_mm": None,
            "metrics": {"dice": {"threshold": fit["threshold"], "worse_when": "below", "enabled": True}},
            "target_fpr": target_rate, "clean_cases": None,
            "data": f"the run's own {fit['organs']} judged organs ({run})",
            "cohort": {k: v for k, v in fit.items() if k != "threshold"},
            "date": time.strftime("%Y-%m-%d")}


def judged(record: dict) -> bool:
    """Whether a record carries a finite Dice the prior gave (ok, outlier or uncalibrated; not an error)."""
    dice = (record.get("scores") or {}).get("dice")
    return record.get("status") in ("ok", "outlier", "not_judged") and isinstance(dice, (int, float)) \
        and math.isfinite(dice)


def rejudge(record: dict, profile: dict) -> dict:
    """``record`` judged against ``profile``: status, outlier, reason and thresholds replaced (an implausible mask
    stays flagged), and a warning saying which verdict the shipped profile gave."""
    status, outlier, reason = verdict(record["scores"], profile, implausible_reason(record))
    shipped = (record.get("thresholds") or {}).get("name") or "the bundle's profile"
    note = (f"judged against the cohort profile {profile['name']} (Dice < {profile['metrics']['dice']['threshold']:.4f}"
            f" flags); {shipped} said {record['status']}")
    warnings = [w for w in record.get("warnings", []) if not w.startswith("judged against the cohort profile")]
    return {**record, "status": status, "outlier": outlier, "reason": reason, "thresholds": profile,
            "warnings": [*warnings, note]}


def calibrate_cohort(out_dir: str | Path, name: str, target_rate: float = 0.05,
                     min_organs: int = DEFAULT_MIN_ORGANS) -> dict:
    """Fit a cohort profile per (bundle, organ) on the run in ``out_dir`` and re-judge the run (module doc).

    Returns the summary written to ``OUT/cohort_calibration.json``: ``name``, ``target_rate``, ``min_organs``,
    ``organs`` {"bundle/organ": {"profile" or "refused", "judged", "flagged_shipped", "flagged_cohort"}}.
    Raises FileNotFoundError when the folder holds no run.
    """
    out_dir = Path(out_dir)
    if not name or any(c in name for c in "/\\") or name.strip() != name:
        raise ValueError(f"a cohort profile name is a plain word (no slashes or outer spaces), got {name!r}")
    with OutputLock(out_dir):
        journal = out_dir / "records.jsonl"
        if not journal.is_file():
            raise FileNotFoundError(f"{out_dir} holds no shapeqc run (no records.jsonl)")
        shipped_file = out_dir / SHIPPED_RECORDS
        if not shipped_file.exists():
            shutil.copyfile(journal, shipped_file)
        # always fitted on, and re-judged from, the run's records as the bundles judged them
        records = [json.loads(line) for line in shipped_file.read_text().splitlines() if line.strip()]
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            if judged(record):
                groups.setdefault(f"{record['bundle']}/{record['organ']}", []).append(index)
        summary = {"name": f"cohort:{name}", "target_rate": target_rate, "min_organs": min_organs,
                   "fitted_on": str(out_dir), "gross_failure_z": GROSS_FAILURE_Z, "organs": {}}
        for key, indices in sorted(groups.items()):
            entry = {"judged": len(indices),
                     "flagged_shipped": sum(records[i]["status"] == "outlier" for i in indices)}
            if len(indices) < min_organs:
                entry["refused"] = (f"{len(indices)} judged organs, fewer than {min_organs}: the shipped verdicts "
                                    "stand")
                entry["flagged_cohort"] = entry["flagged_shipped"]
            else:
                fit = fit_cohort_threshold([records[i]["scores"]["dice"] for i in indices], target_rate)
                profile = cohort_profile(name, fit, target_rate, str(out_dir))
                for i in indices:
                    records[i] = rejudge(records[i], profile)
                entry["profile"] = profile
                entry["flagged_cohort"] = sum(records[i]["status"] == "outlier" for i in indices)
            summary["organs"][key] = entry
        write_atomic(journal, "".join(record_json(r) + "\n" for r in records))
        write_atomic(out_dir / COHORT_FILE, json.dumps(summary, indent=1, allow_nan=False))
        write_reports(records, out_dir)
    return summary
