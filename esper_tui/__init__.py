"""esper-tui: the Esper-Lite control room (application shell; the engine lives in esper_tui.engine)."""

__version__ = "0.1.0"
