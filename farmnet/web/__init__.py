"""The farm's web site (twisted.web)."""
