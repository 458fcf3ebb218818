"""How well a score separates bad organs from clean ones, and how sure a measured rate is: AUROC, ROC points and
the Wilson interval, as the libraries define them (MONAI's ``compute_roc_auc``; scipy's Wilson interval). Used by
the calibration's reports and by every benchmark.
"""

from __future__ import annotations

import numpy as np


def auroc(positives, negatives) -> float:
    """Area under the ROC curve for 'positives (P,) score higher than negatives (N,)', ties counted half:
    MONAI's ``compute_roc_auc``, which equals the Mann-Whitney U statistic over P * N."""
    import torch
    from monai.metrics import compute_roc_auc

    positives, negatives = np.asarray(positives, float).ravel(), np.asarray(negatives, float).ravel()
    scores = torch.from_numpy(np.concatenate([positives, negatives]))
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    return float(compute_roc_auc(scores, labels))


def roc_points(positives, negatives) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, detection rates) of every cut on badness scores (larger = worse), for ROC plots."""
    positives, negatives = np.asarray(positives, float), np.asarray(negatives, float)
    cuts = np.unique(np.concatenate([positives, negatives, [np.inf]]))[::-1]
    return (np.array([(negatives >= c).mean() for c in cuts]), np.array([(positives >= c).mean() for c in cuts]))


def wilson_interval(flagged: int, cases: int) -> tuple[float, float]:
    """95% Wilson score interval of a rate ``flagged / cases``: how far a false-positive rate measured on this many
    clean cases can sit from the true one."""
    from scipy.stats import binomtest

    if cases == 0:
        return 0.0, 1.0
    interval = binomtest(int(flagged), int(cases)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)
