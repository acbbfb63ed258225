"""Serving: the Gateway ingress, the Router policy, the Cloud deployment and the app builder."""
