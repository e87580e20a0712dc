"""hookyard_pushwoosh: built-in connector plugin."""
