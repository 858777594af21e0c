"""The one exception type for mistakes a user can make in a run's config.

Its message is a single line that names the offending value and says how to fix it.
"""


class ConfigError(ValueError):
    """A config value that cannot be trained as given (printed as one line, exit code 2)."""
