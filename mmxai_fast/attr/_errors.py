"""The error class of the attribution classes."""


class AttributionInputError(ValueError, AssertionError):
    """Bad argument or model behaviour. A ``ValueError``; also an ``AssertionError`` so code
    written against Captum (whose checks are ``assert`` statements) still catches it."""
