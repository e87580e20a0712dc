"""hookyard_segment: built-in connector plugin."""
