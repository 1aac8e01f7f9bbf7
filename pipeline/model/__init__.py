"""The model: features, training, evaluation, prediction intervals, and the model and comparison cards."""
