"""cal-agent: keeps Microsoft CAL compliance true to the company directory."""

__version__ = "0.1.0"
