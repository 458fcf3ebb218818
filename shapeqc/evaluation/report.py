"""The QC benchmark's markdown tables and ROC figure, from :func:`shapeqc.evaluation.statistics.tabulate`."""

from __future__ import annotations

from pathlib import Path

from shapeqc.evaluation.statistics import METHODS, method_badness
from shapeqc.scoring.roc import roc_points, wilson_interval


def markdown(result: dict) -> str:
    short = {"shapeqc_dice": "shapeqc Dice", "shapeqc_asd": "ASD", "shapeqc_hd95": "HD95", "shapeqc_max_sd": "max SD",
             "A_volume_z": "A vol z", "B_descriptors": "B descr", "C_linear_ssm": "C SSM", "D_nearest_dice": "D NN",
             "E_rules": "E rules", "shapeqc_dice_or_B": "Dice or B"}
    lines = [f"# QC benchmark: bundle `{result['bundle']}`", "",
             f"Command: `{result['command']}` ({result['seconds']:.0f} s)"
             + (f"; tables rebuilt from its stored scores by `{result['rescored']}`" if result.get("rescored") else "")
             + f". Clean cases: {result['clean_cases']} real val "
             + (f"masks (after the first {result['skipped_cases']}, which selected the weights)"
                if result.get("skipped_cases") else "masks")
             + f"; corrupted: {result['corrupted_cases']}; baselines fitted on {result['train_masks']} training masks."
             + (" Every mask re-sliced as a CT acquisition at " + " x ".join(f"{v:g}" for v in result["spacing_mm"])
                + " mm (tilt seeded per case) before corruption; shapeqc's threshold from the profile "
                + str(result["threshold_profile"]) + "." if result.get("spacing_mm") else ""), "",
             (f"False-positive rate on the clean cases at the shipped Dice threshold "
              f"({result['shipped_dice_threshold']:.4f}): {result['clean_fpr_at_shipped_threshold']:.3f} "
              "(nominal 0.05)" + fpr_context(result) + "." if result["shipped_dice_threshold"] is not None else
              "The bundle had no calibrated thresholds when the run ended: the shipped-threshold figures are left "
              "out; `--rescore` this run's qc_quality.json with `--thresholds-from BUNDLE` once it is calibrated."),
             "", "AUROC (detection rate at each method's own 5% false-positive threshold). Families marked * were "
             "used to train the prior. \"Dice or B\": shapeqc Dice and baseline B, each scaled on the clean cases "
             "(median 0, 95th percentile 1; a clean case on the other clean cases' scale), the larger taken.", "",
             "| family (severity) | cases | median volume change | " + " | ".join(short[m] for m in METHODS)
             + " | shapeqc Dice at shipped threshold |",
             "|---|---|---|" + "---|" * len(METHODS) + "---|"]

    def shipped_cell(rate: float | None, digits: int = 2) -> str:
        return "-" if rate is None else f"{rate:.{digits}f}"

    def row(name: str, entry: dict) -> str:
        cells = [f"{entry[m]['auroc']:.3f} ({entry[m]['detection']:.2f})" for m in METHODS]
        return (f"| {name} | {entry['cases']} | {entry['volume_change']:.3f} | " + " | ".join(cells)
                + f" | {shipped_cell(entry['shapeqc_dice']['detection_shipped'])} |")

    for name, entry in result["families"].items():
        mark = "*" if entry["family"] in result["trained_families"] else ""
        lines.append(row(f"{name.replace(entry['family'], entry['family'] + mark, 1)}", entry))
    for name, entry in result["overall"].items():
        lines.append(row(f"**{name}**", entry))
    family_mean = result.get("family_mean_moderate")
    if family_mean:
        lines += ["", f"**Mean AUROC over the {len(family_mean['rows'])} family rows with a median change >= 10%** "
                  "(equal weight per row): " + ", ".join(f"{short[m]} {family_mean[m]:.3f}" for m in METHODS) + "."]
    earlier = result.get("family_mean_moderate_without_organ_swap")
    if earlier:
        lines += ["", f"The same mean without the organ swap row ({len(earlier['rows'])} rows, as in runs before it "
                  "was added): " + ", ".join(f"{short[m]} {earlier[m]:.3f}" for m in METHODS) + "."]
    if result.get("swap_organ_from"):
        lines += ["", f"swap_organ: another organ's real shape (the `{result['swap_organ_from']}` bundle's val masks, "
                  "one per case in turn) scaled to the organ's volume and centred on it; swap: another val subject's "
                  "organ, centred on it."]
    other = result.get("plausible_set")
    if other:
        lines += ["", f"Another rater's masks of the same held-out scans ({other['cases']} real, plausible but "
                  "different segmentations): false-positive rate at the shipped Dice threshold "
                  f"{shipped_cell(other['fpr_at_shipped_threshold'], 3)}; per method, false-positive rate at its 5% "
                  "threshold (AUROC against the clean cases, 0.5 = indistinguishable):", "",
                  "| " + " | ".join(short[m] for m in METHODS) + " |", "|" + "---|" * len(METHODS),
                  "| " + " | ".join(f"{other[m]['fpr']:.2f} ({other[m]['auroc_vs_clean']:.2f})" for m in METHODS)
                  + " |"]
    estimation = result["quality_estimation"]
    if estimation:
        lines += ["", "Quality estimation (nnQC protocol): Dice(input, reconstruction) as an estimate of the true "
                  f"Dice(input, clean) over {estimation['cases']} corrupted cases (true Dice "
                  f"{estimation['true_dice_range'][0]:.2f}-{estimation['true_dice_range'][1]:.2f}): MAE "
                  f"{estimation['mae']:.3f}, Pearson {estimation['pearson']:.3f}, Spearman {estimation['spearman']:.3f}"
                  + (f", AUROC for true Dice < 0.8: {estimation['auroc_true_dice_below_0.8']:.3f}"
                     if "auroc_true_dice_below_0.8" in estimation else "") + "."]
    lines += dice_estimation_lines(result.get("dice_estimation") or {})
    return "\n".join(lines) + "\n"


def dice_estimation_lines(estimation: dict) -> list[str]:
    """The predicted-Dice table (:func:`shapeqc.evaluation.statistics.dice_estimation`), [] without one."""
    if not estimation:
        return []

    def cell(value):
        return "" if value is None else f"{value:.3f}"

    lines = ["", f"Predicted Dice (issue 22), {estimation['protocol']}; true Dice "
             f"{estimation['true_dice_range'][0]:.2f}-{estimation['true_dice_range'][1]:.2f}:", "",
             "| predictor | organs | Pearson r | Spearman | MAE | interval coverage |", "|---|---|---|---|---|---|"]
    named = [("shapeqc estimate (left-out family)", "estimate"), ("raw Dice(input, reconstruction)", "raw_dice"),
             ("baseline B regressed (left-out family)", "baseline_B_regressed"),
             ("the bundle's shipped estimator", "shipped_estimator")]
    for label, key in named:
        if key in estimation:
            row = estimation[key]
            lines.append(f"| {label} | {row['organs']} | {cell(row['pearson_r'])} | {cell(row['spearman'])} | "
                         f"{cell(row['mae'])} | {cell(row.get('interval_coverage'))} |")
    other = estimation.get("other_rater")
    if other:
        lines += ["", f"Another rater's real masks of the held-out scans ({other['cases']} organs, true Dice to the "
                  f"clean masks {other['true_dice_range'][0]:.2f}-{other['true_dice_range'][1]:.2f}; estimator "
                  "fitted on every clean and corrupted case of this run):", "",
                  "| predictor | organs | Pearson r | Spearman | MAE | interval coverage |",
                  "|---|---|---|---|---|---|"]
        for label, key in [("shapeqc estimate", "estimate"), ("raw Dice(input, reconstruction)", "raw_dice"),
                           ("the bundle's shipped estimator", "shipped_estimator")]:
            if key in other:
                row = other[key]
                lines.append(f"| {label} | {row['organs']} | {cell(row['pearson_r'])} | {cell(row['spearman'])} | "
                             f"{cell(row['mae'])} | {cell(row.get('interval_coverage'))} |")
    mean = estimation["outlier_auroc_family_mean"]
    lines += ["", f"Outlier AUROC averaged over the {len(estimation['outlier_auroc'])} families, each scored by an "
              f"estimate fitted without it: predicted Dice {mean['predicted_dice']:.3f}, raw Dice "
              f"{mean['raw_dice']:.3f} (the shipped decision stays on the raw Dice threshold"
              + ("" if mean["predicted_dice"] <= mean["raw_dice"] else "; the estimate ranks better here") + ")."]
    return lines


def fpr_context(result: dict) -> str:
    """The clean false-positive rate's 95% interval on this run's clean cases, and the calibration's leave-one-out
    rate (the figure for new clean organs) where the bundle's thresholds record it."""
    interval = result.get("clean_fpr_interval_95")
    text = (f"; 95% interval on {result['clean_cases']} cases {interval[0]:.3f}-{interval[1]:.3f}" if interval else "")
    loo = result.get("calibration_leave_one_out_fpr")
    if loo is None:
        return text
    cases = result["calibration_clean_cases"]
    text += (f". These cases are among the {cases} the threshold was calibrated on; each of those {cases} judged "
             f"against the threshold set on the other {cases - 1} (leave one out, the rate a new clean organ meets): ")
    by_source = result.get("calibration_leave_one_out_fpr_by_source")
    counts = result.get("calibration_clean_cases_by_source")
    if by_source and counts:
        # several sources: the threshold holds each to its own quantile, so each source's rate is the figure
        parts = []
        for name, rate in by_source.items():
            flagged, total = round(rate * counts[name]), counts[name]
            low, high = wilson_interval(flagged, total)
            parts.append(f"{name} {rate:.3f} ({flagged} of {total}, 95% interval {low:.3f}-{high:.3f})")
        return text + "; ".join(parts)
    low, high = wilson_interval(round(loo * cases), cases)
    return text + f"{loo:.3f}, 95% interval {low:.3f}-{high:.3f}"


def plot_roc(cases: list[dict], clean_scores: list[dict], out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 5), dpi=100)
    for method in METHODS:
        fpr, tpr = roc_points(method_badness(method, [c["scores"][method] for c in cases]),
                              method_badness(method, [s[method] for s in clean_scores]))
        axis.plot(fpr, tpr, label=method)
    axis.set_xlabel("false-positive rate (clean)")
    axis.set_ylabel("detection rate (all corrupted cases)")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
