"""Fault-injection soak: real controllers on network-namespace hosts, a nemesis, a checker.

Layout: `hosts` (namespaces and the cut), `servers` (private metastore servers),
`probe` (the stand-in scheduler), `recorder` (what actually ran), `nemesis` (faults),
`checker` (the history's verdict), `report` (table, JSON, SVG) and `runner` (one soak).
"""
