"""The configuration schema, one module a section group: pydantic models that import nothing but
:mod:`appliance.settings_base`, so every layer may read its own section. :mod:`appliance.config` puts them
together and loads them from TOML and the environment."""
