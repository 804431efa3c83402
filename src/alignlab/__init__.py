"""alignlab: offline preference optimisation with evidence about robustness.

`alignlab.verdict(table)`: the claims a table of per-response scores supports (alignlab.report.verdict).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Loaded on first use: the engine brings the report's plotting, which `import alignlab` should not.
    if name == "verdict":
        from alignlab.report.verdict import verdict

        return verdict
    raise AttributeError(f"module 'alignlab' has no attribute {name!r}")
