"""farmnet: a Twisted render-farm manager."""

__version__ = "0.1.0"
