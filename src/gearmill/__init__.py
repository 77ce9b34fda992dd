"""gearmill: a Gearman job server, client and worker, wire-compatible with gearmand."""

__version__ = "0.1.0"
