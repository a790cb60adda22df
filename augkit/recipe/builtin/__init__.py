"""The built-in recipes, one YAML file each (``augkit recipes list``)."""
