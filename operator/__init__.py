"""The SAMD operator (kopf handlers), imported as ``samd.operator``."""
