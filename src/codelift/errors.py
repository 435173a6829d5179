"""The one exception type users see: a single sentence naming what is wrong and where."""


class CodeliftError(Exception):
    """Bad input or a missing resource. The CLI prints the message alone, without a traceback."""
