"""The catalogue: parsing datasets.json, paths inside the home, registering it in the store."""
