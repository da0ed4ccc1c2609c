"""nestemb.models."""
