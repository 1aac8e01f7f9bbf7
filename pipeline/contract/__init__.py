"""What the data and the policy are: the model's configuration, settings from the environment, run parameters, the age formula."""
