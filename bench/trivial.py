"""The framework's floor: a functions-framework function that does nothing, started like ours."""

from typing import Any


def hello(request: Any) -> str:
    return "hello"
