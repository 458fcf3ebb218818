"""What a bundle's predicted Dice was measured to do: the section of its README that says it (issue 35).

Three measurements, each on organs the estimator was not fitted on, side by side with the raw Dice(segmentation,
reconstruction) used as the estimate:

- the calibration's own organs, each corruption family left out of the fit in turn (what ``rank_by`` and the
  coverage the page prints come from: ``configs/thresholds.json``, :mod:`shapeqc.scoring.quality`);
- the QC benchmark's 12 families (``docs/qc_quality.json``, ``docs/ct_profile/qc_quality.json``): the shipped
  estimator on corrupted held-out organs, half of whose families calibration never drew;
- real model failures (``docs/cross_source.json``, ``benchmarks/cross_source.py``) where the bundle has them.

    python -m shapeqc.evaluation.estimate_card bundles/kidney [--write]

``--write`` replaces (or adds, before the QC benchmark section) the README section :data:`TITLE`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shapeqc.scoring.thresholds import load_thresholds

TITLE = "## Predicted Dice: what was measured (issue 35)"


def _trio(metrics: dict) -> str:
    values = [metrics.get(key) for key in ("pearson_r", "spearman", "mae")]
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _profile_name(spacing) -> str:
    return "as given" if spacing is None else "re-sliced " + " x ".join(f"{v:g}" for v in spacing) + " mm"


def estimated_profiles(bundle_dir: Path) -> list[dict]:
    """The profiles of the bundle's thresholds whose predicted-Dice estimator was measured on held-out organs (read
    once: :func:`estimate_section` walks them twice)."""
    return [profile for profile in (load_thresholds(bundle_dir) or {}).get("profiles", [])
            if "held_out" in (profile.get("quality_estimator") or {})]


def estimate_rows(bundle_dir: Path, profiles: list[dict] | None = None) -> list[dict]:
    """One row per (profile, measurement): ``profile``, ``measured_on``, ``organs``, ``estimate`` and ``raw_dice``
    metrics (pearson_r, spearman, mae), ``coverage`` of the shipped interval. ``profiles``: those of
    :func:`estimated_profiles` (read from the bundle when not given)."""
    bundle_dir = Path(bundle_dir)
    docs = bundle_dir / "docs"
    rows = []
    for profile in estimated_profiles(bundle_dir) if profiles is None else profiles:
        estimator = profile["quality_estimator"]
        name = _profile_name(profile["spacing_mm"])
        held = estimator["held_out"]
        families = len(estimator["coverage_by_kind"])
        rows.append({"profile": name, "measured_on": f"calibration organs, each of {families} families left out "
                     "of the fit", "organs": held["estimate"]["organs"], "estimate": held["estimate"],
                     "raw_dice": held["raw_dice"], "coverage": estimator["measured_coverage"]})
        qc_path = docs / ("qc_quality.json" if profile["spacing_mm"] is None else "ct_profile/qc_quality.json")
        if qc_path.exists():
            estimation = json.loads(qc_path.read_text()).get("dice_estimation") or {}
            shipped = estimation.get("shipped_estimator")
            if shipped:
                rows.append({"profile": name, "measured_on": f"QC benchmark, {len(estimation['families'])} "
                             "families (shipped estimator)", "organs": shipped["organs"], "estimate": shipped,
                             "raw_dice": estimation["raw_dice"], "coverage": shipped.get("interval_coverage")})
        cross_path = docs / "cross_source.json"
        if cross_path.exists():
            cross = json.loads(cross_path.read_text())
            judged_here = {str(r.get("profile_spacing")) for r in cross["rows"] if r.get("predicted_dice") is not None
                           and r["source"] == "evalseg prediction"}
            for organ, summary in cross["predictions"].items():
                if str(profile["spacing_mm"]) in judged_here and summary.get("estimate"):
                    rows.append({"profile": name, "measured_on": f"real model failures (evalseg, {organ})",
                                 "organs": summary["predictions"], "estimate": summary["estimate"],
                                 "raw_dice": summary["raw_dice"], "coverage": summary.get("interval_coverage")})
    return rows


def estimate_section(bundle_dir: Path) -> str:
    """The README section (markdown, :data:`TITLE` first) for ``bundle_dir``."""
    bundle_dir = Path(bundle_dir)
    profiles = estimated_profiles(bundle_dir)
    lines = [TITLE, "",
             "The predicted Dice and its interval on organs the estimator was not fitted on, beside the raw "
             "Dice(segmentation, reconstruction) as the estimate (r / Spearman / MAE against the true Dice; "
             "[docs/analysis.md](../../../docs/analysis.md)). Regenerate: "
             f"`python -m shapeqc.evaluation.estimate_card bundles/{bundle_dir.name} --write`.", "",
             "| profile | measured on | organs | estimate r / rho / MAE | raw Dice r / rho / MAE | interval coverage |",
             "|---|---|---|---|---|---|"]
    for row in estimate_rows(bundle_dir, profiles):
        lines.append(f"| {row['profile']} | {row['measured_on']} | {row['organs']} | {_trio(row['estimate'])} "
                     f"| {_trio(row['raw_dice'])} | {_percent(row['coverage'])} |")
    lines.append("")
    for profile in profiles:
        estimator = profile["quality_estimator"]
        real = estimator.get("real_failures")
        shown = (f"{_percent(real['coverage'])} on real model failures" if real
                 and real["coverage"] < estimator["measured_coverage"]
                 else f"{_percent(estimator['measured_coverage'])} on {estimator['coverage_basis']}")
        ranked = "the predicted Dice" if estimator["rank_by"] == "predicted_dice" else "the raw Dice"
        lines.append(f"- {_profile_name(profile['spacing_mm'])}: the page shows the interval as covered {shown} "
                     f"(target {_percent(estimator['target_coverage'])}); the worklist sorts by {ranked}.")
    return "\n".join(lines) + "\n"


def write_section(readme: Path, section: str) -> None:
    """Replace the README's :data:`TITLE` section by ``section``, or put it before its QC benchmark section (or at
    the end)."""
    text = readme.read_text()
    if TITLE in text:
        start = text.index(TITLE)
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    else:
        anchor = text.find("\n## QC benchmark")
        text = text.rstrip("\n") + "\n\n" + section if anchor < 0 else (
            text[:anchor + 1] + section + "\n" + text[anchor + 1:])
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--write", action="store_true", help="write the section into the bundle's docs/README.md")
    args = parser.parse_args(argv)
    section = estimate_section(args.bundle)
    if args.write:
        write_section(args.bundle / "docs" / "README.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
