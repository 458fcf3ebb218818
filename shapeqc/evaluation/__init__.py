"""Evaluation of shape priors as QC methods, a tested library used by the calibration and the QC benchmark alike.

- :mod:`shapeqc.calibration.corruptions`: the one registry of corruption families (seeded generators of the
  failure modes a segmenter shows) and the swaps;
- :mod:`shapeqc.evaluation.baselines`: the simpler QC scores shapeqc is compared with (A-E);
- :mod:`shapeqc.evaluation.protocol`: clean held-out masks, their corruptions, every method's scores;
- :mod:`shapeqc.evaluation.statistics`: AUROC, oriented and combined scores, intervals, the tables;
- :mod:`shapeqc.evaluation.report`: the markdown tables and the ROC figure.

``benchmarks/qc_quality.py`` is the command that runs them.
"""
