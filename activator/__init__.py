"""activator: a socket-activation super-server; every connection runs as a fresh dynamic user."""

__version__ = "0.1.0.dev0"
