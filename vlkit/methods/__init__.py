"""The method protocol, the registry, and the foundation methods (zero-shot, linear probe)."""
from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import create_method, list_methods, method_class, register_method

__all__ = ["Method", "MethodConfig", "create_method", "list_methods", "method_class", "register_method"]
