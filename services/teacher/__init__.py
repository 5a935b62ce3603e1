"""Teacher: LLaVA-1.5 interaction maps (engine) and, on top, their REST service."""
