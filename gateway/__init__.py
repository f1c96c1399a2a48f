"""Push gateway: live per-user updates over Socket.IO, fanned out through Redis."""
