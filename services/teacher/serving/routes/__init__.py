"""The teacher's REST routes, one router per resource; `serving.app.create_app` mounts them."""
