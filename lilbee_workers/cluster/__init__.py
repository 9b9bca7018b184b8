"""The Ray backend (``backend = "ray"``): role replicas as Ray actors, same API."""
