"""The web playground: a FastAPI app over the probes and a single page that shows two models side by side."""
