"""authchat: a self-hosted, authenticated group-chat server."""

__version__ = "0.1.0"
