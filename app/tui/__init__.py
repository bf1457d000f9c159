"""The Textual dashboard: the app, its state (free of Textual), the engine feed, commands."""
