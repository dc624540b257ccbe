from .jobs import LocalBackend

__all__ = ["LocalBackend"]
