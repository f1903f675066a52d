"""Error types that the CLI turns into one clear line and a non-zero exit."""
from __future__ import annotations


class NtsError(Exception):
    """Base class for every refusal the user should see as a single line."""


class ConfigError(NtsError):
    """A configuration file or override is invalid (unknown key, wrong type, out of range)."""


class DataError(NtsError):
    """Input candles are unusable (missing columns, NaN, unsorted, bad OHLC, ...)."""


class BundleError(NtsError):
    """A model bundle is missing, tampered with, or built for other code."""


class OutputError(NtsError):
    """An output path is refused (it would replace the user's files or an input) or cannot be
    written there."""
