"""One router per resource; `services.dashboard.app.create_app` includes them all."""
