"""The router: the fixed ingress that forwards each request to the active boot."""
