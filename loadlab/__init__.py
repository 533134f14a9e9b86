"""loadlab: one command runs the load lab and answers where the API breaks and what ran out first."""

__version__ = "0.1.0"
