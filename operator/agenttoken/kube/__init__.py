"""The Kubernetes API client: the only package that imports a Kubernetes client library."""
