"""codelift: make small code models better."""
