"""The train step: grid configs, models, the training loop, export and its KFP component."""
