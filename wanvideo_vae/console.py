"""Console output that cannot fail on text the console's code page lacks (a Chinese folder name in a
Windows console or pipe, which Python encodes in the ANSI code page, strictly). Imports nothing of the
package: install.py loads this file before the package is built."""
import sys


def tolerant_console():
    """From now on, what stdout and stderr cannot encode is printed escaped (\\u5de5), not raised."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # not a text stream of io's, or detached
            pass
