"""Optional storage backends; each lives in its own module and imports its own extra.

``streamkit.backends.redis`` needs the ``streamkit[redis]`` extra.
"""

__all__: list[str] = []
