"""HTTP routes by resource, each module registering its own on the app."""
