"""OCI distribution client, image model, blob cache and registry cleanup."""
