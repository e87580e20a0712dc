"""hookyard_novu: built-in connector plugin."""
