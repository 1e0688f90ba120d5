"""Configuration: the settings model, loading it from YAML and the environment, and resolving
it into the plain values the rest of rollbackd works with."""

from rollbackd.config.loader import ConfigError, Problem, load_settings, resolve_config_path
from rollbackd.config.resolve import default_params, target_params
from rollbackd.config.settings import Settings, TargetSettings

__all__ = [
    "ConfigError",
    "Problem",
    "Settings",
    "TargetSettings",
    "default_params",
    "load_settings",
    "resolve_config_path",
    "target_params",
]
