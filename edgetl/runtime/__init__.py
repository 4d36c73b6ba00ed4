"""On-device code. Imports numpy (and, later, one inference engine) only: never torch."""
