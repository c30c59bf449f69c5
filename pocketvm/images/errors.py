"""The one exception type of the image builder.

Every failure the user can meet (no apt tools, mirror unreachable, signature
not verified, a file missing from a package...) is an ImageError whose text is
a single line meant to be shown as-is, without a traceback.
"""

from __future__ import annotations


class ImageError(Exception):
    """A user-facing, one-line failure of `pocket image pull` or image loading."""
