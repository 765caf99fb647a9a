"""oaknet: semantic service addressing for edge clusters, translated inside Open vSwitch."""

__version__ = "0.1.0"
