"""Config floor: the models that check the config groups, the values they take, the storage spec."""
