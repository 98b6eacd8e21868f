"""Inference: the forward pass and eval step shared by evaluation,
prediction and export, and the predictor over image files."""
