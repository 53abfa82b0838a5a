"""Glue between the pure core and the platform: settings, experiment config, demand models, MLflow."""
