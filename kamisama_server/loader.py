"""Import the user's app from ``"module:attr"`` and tell WSGI from ASGI.

Why the care with errors: "the app cannot be imported" is exit code 3 with one
clear line, and the most common support question is "module not found" when
really an import *inside* the module failed. So those are told apart, and the
inner failure carries its traceback.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, Literal

Interface = Literal["asgi", "wsgi"]
INTERFACES: tuple[str, ...] = ("auto", "asgi", "wsgi")


class LoadError(Exception):
    """The app cannot be loaded; ``str(self)`` is the one line to show (exit code 3).

    ``detail`` holds the traceback, when there is one: shown at debug level, so a
    failed start stays one readable line however many workers hit it.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class AppSpecError(LoadError, ValueError):
    """The ``APP`` argument is not of the form ``module:attr``."""


class AppModuleNotFound(LoadError):
    """The module named in the spec (or one of its parent packages) does not exist."""


class AppImportError(LoadError):
    """The module exists but importing it raised; the message holds the traceback."""


class AppAttributeError(LoadError):
    """The module has no such attribute."""


class AppNotCallable(LoadError):
    """The attribute (or what the factory returned) cannot be called."""


class AppFactoryError(AppNotCallable):
    """The app is a callable taking no arguments: a factory given without ``--factory``."""


class AppInterfaceError(LoadError):
    """The app cannot be the interface asked for (e.g. ``--interface wsgi`` on async)."""


def parse_app_spec(spec: str) -> tuple[str, str]:
    """Split ``"pkg.mod:obj.app"`` into module and attribute path, or raise AppSpecError."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise AppSpecError(f"{spec!r}: expected MODULE:ATTRIBUTE, e.g. myapp:app or pkg.web:app")
    for part in (*module.split("."), *attr.split(".")):
        if not part.isidentifier():
            raise AppSpecError(f"{spec!r}: {part!r} is not a valid Python name")
    return module, attr


def import_from_string(spec: str, app_dir: str | None = None) -> Any:
    """Import ``module`` and walk the dotted ``attr`` of ``"module:attr"``.

    ``app_dir`` (default: the current directory) goes first on ``sys.path``,
    as ``python -m`` would do for the current directory.
    """
    module_name, attr = parse_app_spec(spec)
    directory = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_module_or_parent(exc.name, module_name):
            raise AppModuleNotFound(
                f"{spec}: module {exc.name!r} not found (looked in {directory} and sys.path)"
            ) from None
        raise _import_failure(f"{spec}: importing module {module_name!r} failed", exc) from None
    except Exception as exc:
        raise _import_failure(f"{spec}: importing module {module_name!r} failed", exc) from None
    obj: Any = module
    walked = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppAttributeError(f"{spec}: {walked!r} has no attribute {part!r}") from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    return obj


def _is_module_or_parent(missing: str, module_name: str) -> bool:
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failure(what: str, exc: BaseException) -> AppImportError:
    """One line (the exception and where it was raised), the traceback as detail."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    where = _location(exc)
    at = f" (at {where})" if where else ""
    return AppImportError(f"{what}: {type(exc).__name__}: {exc}{at}", detail=tb)


def _location(exc: BaseException) -> str:
    """``file:line`` of the innermost frame, or of the bad source for a SyntaxError."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame outside importlib's machinery (a failed nested import
    # ends in <frozen importlib._bootstrap>, which tells the user nothing).
    for frame in reversed(frames):
        if not frame.filename.startswith("<frozen"):
            return f"{frame.filename}:{frame.lineno}"
    return ""


def load_app(spec: str, app_dir: str | None = None, factory: bool = False) -> Callable[..., Any]:
    """The app object named by ``spec``; with ``factory``, what calling it returns."""
    obj = import_from_string(spec, app_dir)
    if factory:
        if not callable(obj):
            raise AppNotCallable(f"{spec}: the factory is not callable ({type(obj).__name__})")
        try:
            obj = obj()
        except Exception as exc:
            raise _import_failure(f"{spec}: calling the factory failed", exc) from None
        if not callable(obj):
            raise AppNotCallable(
                f"{spec}: the factory returned {type(obj).__name__}, not a callable app"
            )
        return obj  # type: ignore[no-any-return]
    if not callable(obj):
        raise AppNotCallable(
            f"{spec}: is a {type(obj).__name__}, not a callable app"
            " (if it is a factory, pass --factory)"
        )
    if _looks_like_factory(obj):
        raise AppFactoryError(
            f"{spec}: {_name(obj)}{_signature(obj)} takes no arguments, so it looks like an "
            "app factory: pass --factory (an app takes (environ, start_response) for WSGI "
            "or (scope, receive, send) for ASGI)"
        )
    return obj  # type: ignore[no-any-return]


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _looks_like_factory(obj: Any) -> bool:
    """Callable with no arguments, but not with an app's 2 (WSGI, ASGI 2's receive and
    send) or 3 (ASGI) positional ones; ASGI 2 classes take one (``scope``) and pass."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False  # builtins and the like: trust the user

    def binds(count: int) -> bool:
        try:
            signature.bind(*(object() for _ in range(count)))
        except TypeError:
            return False
        return True

    return binds(0) and not binds(2) and not binds(3)


def load_hook(spec: str, app_dir: str | None = None) -> Callable[..., Any]:
    """A ``--run``/``--shutdown`` hook ``"module:func"``: same import rules as the app."""
    obj = import_from_string(spec, app_dir)
    if not callable(obj):
        raise AppNotCallable(f"{spec}: is a {type(obj).__name__}, not a callable hook")
    return obj  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- interface


def _unwrap_partial(obj: Any) -> Any:
    for _ in range(100):  # partial of partial of ...; bounded
        if not isinstance(obj, functools.partial):
            break
        obj = obj.func
    return obj


def _is_async_callable(obj: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(obj):  # also sees through functools.partial
        return True
    target = _unwrap_partial(obj)
    if inspect.isclass(target):
        return False
    call = getattr(target, "__call__", None)  # noqa: B004 - the method itself, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def is_asgi2(app: Any) -> bool:
    """An ASGI 2 "double callable" class: ``App(scope)`` then ``await instance(receive, send)``.

    Only classes can be recognized without calling them.
    """
    target = _unwrap_partial(app)
    return (
        inspect.isclass(target)
        and not hasattr(target, "__await__")
        and inspect.iscoroutinefunction(getattr(target, "__call__", None))  # noqa: B004
    )


def detect_interface(app: Any, interface: str = "auto") -> Interface:
    """``"asgi"`` for an async callable taking (scope, receive, send), else ``"wsgi"``.

    ASGI: a coroutine function; an object (starlette/fastapi app, a class
    instance) whose ``__call__`` is one; a ``functools.partial`` of either; a
    class whose instances are awaitable (ASGI 3 class style) or an ASGI 2
    class. ``interface`` other than ``"auto"`` wins, except that an async
    callable cannot be WSGI.
    """
    if interface not in INTERFACES:
        raise AppInterfaceError(f"interface must be one of {', '.join(INTERFACES)}")
    target = _unwrap_partial(app)
    is_async = _is_async_callable(app) or (
        inspect.isclass(target) and (hasattr(target, "__await__") or is_asgi2(target))
    )
    if interface == "wsgi":
        if is_async:
            raise AppInterfaceError(
                "--interface wsgi, but the app is an async callable (ASGI); "
                "use --interface asgi or auto"
            )
        return "wsgi"
    if interface == "asgi" or is_async:
        _check_asgi3_signature(app)
        return "asgi"
    return "wsgi"


def _check_asgi3_signature(app: Any) -> None:
    """Fail early, with a clear message, for an async app with the wrong arity."""
    target = _unwrap_partial(app)
    if inspect.isclass(target) and is_asgi2(target):
        return  # checked when the adapter wraps it
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return  # builtins and the like: trust the user
    try:
        signature.bind(object(), object(), object())
    except TypeError:
        raise AppInterfaceError(
            f"the ASGI app {_name(app)} must take (scope, receive, send); "
            f"its signature is {signature}"
        ) from None


def _name(app: Any) -> str:
    target = _unwrap_partial(app)
    return getattr(target, "__qualname__", None) or type(target).__qualname__


def as_asgi3(app: Any) -> Callable[[Any, Any, Any], Any]:
    """The app as an ASGI 3 callable: ASGI 2 classes get a small wrapper."""
    if not is_asgi2(app):
        return app  # type: ignore[no-any-return]

    async def asgi3(scope: Any, receive: Any, send: Any) -> None:
        instance = app(scope)
        await instance(receive, send)

    asgi3.__qualname__ = f"as_asgi3({_name(app)})"
    return asgi3
