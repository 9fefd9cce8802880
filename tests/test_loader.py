"""kamisama_server.loader: importing "module:attr" and WSGI/ASGI detection."""

from __future__ import annotations

import asyncio
import functools
import importlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kamisama_server.loader import (
    AppAttributeError,
    AppFactoryError,
    AppImportError,
    AppInterfaceError,
    AppModuleNotFound,
    AppNotCallable,
    AppSpecError,
    LoadError,
    as_asgi3,
    detect_interface,
    is_asgi2,
    load_app,
    load_hook,
    parse_app_spec,
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for app modules; sys.path and sys.modules are restored after."""
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    importlib.invalidate_caches()
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


def write(directory: Path, relpath: str, source: str) -> None:
    path = directory / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]
"""

ASGI_APP = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi"})
"""


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("spec", "parts"),
    [("m:app", ("m", "app")), ("pkg.mod:obj.app", ("pkg.mod", "obj.app"))],
)
def test_parse_app_spec(spec: str, parts: tuple[str, str]) -> None:
    assert parse_app_spec(spec) == parts


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myapp", "expected MODULE:ATTRIBUTE"),
        (":app", "expected MODULE:ATTRIBUTE"),
        ("myapp:", "expected MODULE:ATTRIBUTE"),
        ("my-app:app", "'my-app' is not a valid Python name"),
        ("m:app()", "'app()' is not a valid Python name"),
        ("m:a..b", "'' is not a valid Python name"),
        ("m:a:b", "'a:b' is not a valid Python name"),
    ],
)
def test_bad_spec_format_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(AppSpecError, match=re.escape(message)) as info:
        parse_app_spec(spec)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LoadError)


# --------------------------------------------------------------------------- loading


def test_loads_module_attr_from_app_dir(app_dir: Path) -> None:
    write(app_dir, "simple_wsgi.py", WSGI_APP)
    app = load_app("simple_wsgi:app", app_dir=str(app_dir))
    assert app.__module__ == "simple_wsgi"
    assert sys.path[0] == str(app_dir)


def test_app_dir_defaults_to_the_current_directory(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(app_dir, "cwd_app.py", WSGI_APP)
    monkeypatch.chdir(app_dir)
    assert callable(load_app("cwd_app:app"))
    assert sys.path[0] == str(app_dir)


def test_app_dir_is_not_inserted_twice(app_dir: Path) -> None:
    write(app_dir, "twice.py", WSGI_APP)
    load_app("twice:app", app_dir=str(app_dir))
    load_app("twice:app", app_dir=str(app_dir))
    assert sys.path.count(str(app_dir)) == 1


def test_dotted_module_and_dotted_attribute(app_dir: Path) -> None:
    write(app_dir, "dpkg/__init__.py", "")
    write(
        app_dir,
        "dpkg/web.py",
        """
        class Holder:
            pass
        holder = Holder()
        def app(environ, start_response):
            return []
        holder.app = app
        """,
    )
    app = load_app("dpkg.web:holder.app", app_dir=str(app_dir))
    assert app.__name__ == "app"


def test_factory_is_called_with_no_arguments(app_dir: Path) -> None:
    write(
        app_dir,
        "fact.py",
        """
        calls = []
        def create_app():
            calls.append(1)
            async def app(scope, receive, send):
                pass
            return app
        """,
    )
    app = load_app("fact:create_app", app_dir=str(app_dir), factory=True)
    assert app.__name__ == "app"
    assert sys.modules["fact"].calls == [1]


def test_module_missing_is_module_not_found(app_dir: Path) -> None:
    with pytest.raises(
        AppModuleNotFound, match=r"^nosuchmod_x:app: module 'nosuchmod_x' not found"
    ):
        load_app("nosuchmod_x:app", app_dir=str(app_dir))


def test_missing_submodule_of_a_package_is_module_not_found(app_dir: Path) -> None:
    write(app_dir, "haspkg/__init__.py", "")
    with pytest.raises(AppModuleNotFound, match=r"module 'haspkg\.nope' not found"):
        load_app("haspkg.nope:app", app_dir=str(app_dir))


def test_missing_parent_package_is_module_not_found(app_dir: Path) -> None:
    with pytest.raises(AppModuleNotFound, match="module 'nopkg_y' not found"):
        load_app("nopkg_y.web:app", app_dir=str(app_dir))


def test_an_import_inside_the_module_failing_is_an_import_error_with_traceback(
    app_dir: Path,
) -> None:
    write(
        app_dir,
        "inner_fail.py",
        """
        import os
        import not_installed_dependency_z
        app = None
        """,
    )
    with pytest.raises(AppImportError) as info:
        load_app("inner_fail:app", app_dir=str(app_dir))
    message = str(info.value)
    assert message.startswith(
        "inner_fail:app: importing module 'inner_fail' failed: ModuleNotFoundError: "
        "No module named 'not_installed_dependency_z'"
    )
    assert "\n" not in message  # one line; the traceback is the detail
    assert message.endswith("inner_fail.py:3)")
    assert "Traceback (most recent call last)" in info.value.detail
    assert 'inner_fail.py", line 3' in info.value.detail
    assert not isinstance(info.value, AppModuleNotFound)


def test_a_module_raising_at_import_is_an_import_error_with_traceback(app_dir: Path) -> None:
    write(app_dir, "raises_at_import.py", "raise RuntimeError('no DATABASE_URL')\n")
    with pytest.raises(AppImportError, match="RuntimeError: no DATABASE_URL") as info:
        load_app("raises_at_import:app", app_dir=str(app_dir))
    assert str(info.value).endswith("raises_at_import.py:1)")
    assert 'raises_at_import.py", line 1' in info.value.detail


def test_a_syntax_error_is_an_import_error(app_dir: Path) -> None:
    write(app_dir, "bad_syntax.py", "def app(:\n")
    with pytest.raises(AppImportError, match="SyntaxError") as info:
        load_app("bad_syntax:app", app_dir=str(app_dir))
    assert str(info.value).endswith("bad_syntax.py:1)")


def test_missing_attribute_names_the_missing_part(app_dir: Path) -> None:
    write(app_dir, "attrs.py", "class obj:\n    pass\n")
    with pytest.raises(AppAttributeError, match=r"^attrs:aap: 'attrs' has no attribute 'aap'$"):
        load_app("attrs:aap", app_dir=str(app_dir))
    with pytest.raises(AppAttributeError, match=r"'attrs:obj' has no attribute 'app'$"):
        load_app("attrs:obj.app", app_dir=str(app_dir))


def test_not_callable_suggests_factory(app_dir: Path) -> None:
    write(app_dir, "notcall.py", "app = 42\n")
    with pytest.raises(AppNotCallable, match="is a int, not a callable app"):
        load_app("notcall:app", app_dir=str(app_dir))


def test_factory_returning_a_non_callable_is_an_error(app_dir: Path) -> None:
    write(app_dir, "badfact.py", "def create():\n    return None\n")
    with pytest.raises(AppNotCallable, match="the factory returned NoneType"):
        load_app("badfact:create", app_dir=str(app_dir), factory=True)


def test_factory_that_raises_is_an_import_error_with_traceback(app_dir: Path) -> None:
    write(app_dir, "raisefact.py", "def create():\n    raise KeyError('SECRET_KEY')\n")
    with pytest.raises(AppImportError, match="calling the factory failed: KeyError") as info:
        load_app("raisefact:create", app_dir=str(app_dir), factory=True)
    assert "Traceback" in info.value.detail
    assert str(info.value).endswith("raisefact.py:2)")


@pytest.mark.parametrize(
    "source",
    [
        "def create_app():\n    return lambda environ, start_response: []\n",
        "async def create_app():\n    return None\n",
        "def create_app(config=None):\n    return None\n",
    ],
)
def test_a_factory_without_factory_flag_is_refused_with_a_hint(app_dir: Path, source: str) -> None:
    write(app_dir, "fact.py", source)
    with pytest.raises(AppFactoryError, match="looks like an app factory: pass --factory"):
        load_app("fact:create_app", app_dir=str(app_dir))


@pytest.mark.parametrize(
    "source",
    [
        "def app(environ, start_response):\n    return []\n",
        "async def app(scope, receive, send):\n    pass\n",
        "def app(*args):\n    return []\n",
        "class app:\n    def __init__(self, scope):\n        pass\n",  # ASGI 2 class
    ],
)
def test_apps_are_not_mistaken_for_factories(app_dir: Path, source: str) -> None:
    write(app_dir, "realapp.py", source)
    assert callable(load_app("realapp:app", app_dir=str(app_dir)))


def test_load_hook(app_dir: Path) -> None:
    write(app_dir, "hooks_mod.py", "def on_run(worker_id):\n    pass\nvalue = 1\n")
    assert load_hook("hooks_mod:on_run", str(app_dir)).__name__ == "on_run"
    with pytest.raises(AppNotCallable, match="not a callable hook"):
        load_hook("hooks_mod:value", str(app_dir))


# --------------------------------------------------------------------------- interface


async def asgi_function(scope: Any, receive: Any, send: Any) -> None:
    pass


def wsgi_function(environ: Any, start_response: Any) -> list[bytes]:
    return []


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


class WsgiClass:
    """PEP 3333's class-as-app: instantiated per request, iterated."""

    def __init__(self, environ: Any, start_response: Any) -> None:
        self.start = start_response

    def __iter__(self) -> Iterator[bytes]:
        yield b""


class Asgi3Class:
    """Instantiated with (scope, receive, send), then awaited."""

    def __init__(self, scope: Any, receive: Any, send: Any) -> None:
        pass

    def __await__(self) -> Any:
        return asyncio.sleep(0).__await__()


class Asgi2Class:
    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await send({"type": "seen", "scope": self.scope})


async def asgi_with_options(scope: Any, receive: Any, send: Any, *, debug: bool) -> None:
    pass


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (asgi_function, "asgi"),
        (AsgiObject(), "asgi"),
        (functools.partial(asgi_with_options, debug=True), "asgi"),
        (functools.partial(AsgiObject()), "asgi"),
        (Asgi3Class, "asgi"),
        (Asgi2Class, "asgi"),
        (wsgi_function, "wsgi"),
        (WsgiObject(), "wsgi"),
        (WsgiClass, "wsgi"),
        (functools.partial(wsgi_function), "wsgi"),
    ],
    ids=lambda v: getattr(v, "__qualname__", None) or type(v).__qualname__,
)
def test_detect_interface(app: Any, expected: str) -> None:
    assert detect_interface(app) == expected


def test_detects_real_framework_apps() -> None:
    import fastapi
    import flask
    import starlette.applications

    assert detect_interface(fastapi.FastAPI()) == "asgi"
    assert detect_interface(starlette.applications.Starlette()) == "asgi"
    assert detect_interface(flask.Flask("x")) == "wsgi"
    assert detect_interface(flask.Flask("x").wsgi_app) == "wsgi"


def test_detects_modules_loaded_from_files(app_dir: Path) -> None:
    write(app_dir, "det_wsgi.py", WSGI_APP)
    write(app_dir, "det_asgi.py", ASGI_APP)
    assert detect_interface(load_app("det_wsgi:app", str(app_dir))) == "wsgi"
    assert detect_interface(load_app("det_asgi:app", str(app_dir))) == "asgi"


def test_explicit_interface_overrides_detection() -> None:
    # a sync callable returning a coroutine: only the user knows it is ASGI
    def sync_returning_coroutine(scope: Any, receive: Any, send: Any) -> Any:
        return asgi_function(scope, receive, send)

    assert detect_interface(sync_returning_coroutine) == "wsgi"
    assert detect_interface(sync_returning_coroutine, "asgi") == "asgi"
    assert detect_interface(wsgi_function, "wsgi") == "wsgi"


def test_an_async_app_cannot_be_forced_to_wsgi() -> None:
    with pytest.raises(AppInterfaceError, match="--interface wsgi, but the app is an async"):
        detect_interface(asgi_function, "wsgi")


def test_an_async_app_with_the_wrong_arity_is_a_clear_error() -> None:
    async def handler(request: Any) -> None:
        pass

    with pytest.raises(AppInterfaceError, match=r"must take \(scope, receive, send\)"):
        detect_interface(handler)


def test_unknown_interface_is_an_error() -> None:
    with pytest.raises(AppInterfaceError, match="interface must be one of auto, asgi, wsgi"):
        detect_interface(wsgi_function, "rsgi")


def test_asgi2_class_is_wrapped_into_asgi3() -> None:
    assert is_asgi2(Asgi2Class)
    assert not is_asgi2(AsgiObject())
    assert not is_asgi2(Asgi3Class)
    assert as_asgi3(asgi_function) is asgi_function
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        sent.append(message)

    app3 = as_asgi3(Asgi2Class)
    assert detect_interface(app3) == "asgi"
    asyncio.run(app3({"type": "http"}, receive, send))
    assert sent == [{"type": "seen", "scope": {"type": "http"}}]
