"""How a control room reaches an engine: the link interface (base.py) and the links to an engine elsewhere
(remote.py, over Redis) and to a recording (replay.py). A local engine is a link itself (engine.runtime.Engine).
"""
