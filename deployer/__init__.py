"""Render, server-side apply, track until rolled out, record releases, roll back."""
