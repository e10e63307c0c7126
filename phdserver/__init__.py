"""phdserver: a headless daemon that speaks PHD2's event-server protocol.

It drives cameras (a built-in simulator, INDI) and runs camera work as asynchronous,
cancellable operations: dark libraries and defect maps in PHD2's own file formats.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
