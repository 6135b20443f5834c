"""Runtime: model loading, device placement and the generation engine."""
