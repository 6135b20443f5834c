"""Skills: the handlers that know how to load and run one kind of model."""
