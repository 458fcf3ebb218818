"""The numbers of one organ: Dice and surface distances, thresholds and decisions, the predicted Dice, defects, ROC
statistics."""
