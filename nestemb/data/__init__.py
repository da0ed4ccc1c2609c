"""nestemb.data."""
