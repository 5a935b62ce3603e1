"""The lfi services: teacher, student, dashboard. Each depends on `shared` only."""
