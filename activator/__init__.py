"""activator: a socket-activation super-server that runs every connection as a fresh dynamic user."""

__version__ = "0.1.0.dev0"
