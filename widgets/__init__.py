"""Textual widgets of the dashboard. They get data and emit messages; no store, no network."""
