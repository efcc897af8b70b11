"""Where traces live between requests."""
