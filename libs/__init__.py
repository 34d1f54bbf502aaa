"""The platform layer shared by every service. `__version__` is the one version source: the package
metadata (pyproject.toml reads it) and every service's OpenAPI document carry it."""

__version__ = "0.1.0"
DISTRIBUTION = "self-hosted-analytics"  # the name on PyPI: `pip install self-hosted-analytics[embedded]`
