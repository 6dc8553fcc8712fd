"""JWT authentication, roles and tenant scoping."""
