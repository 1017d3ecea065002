"""The edge: routers only — parse, authenticate, call one service function, return."""
