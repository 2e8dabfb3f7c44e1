"""radlvlm: an open clinical radiology assistant (chest X-ray report drafting and error checking)."""

__version__ = "0.1.0"
