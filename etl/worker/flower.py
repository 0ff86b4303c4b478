"""Flower for ``-A etl.worker``, only ever behind its login: ``python -m etl.worker.flower [Flower options]``.

Flower on its own serves every page (workers, tasks and their arguments, the broker) to anyone
when FLOWER_BASIC_AUTH is unset, and Flower 2.2 answers ``/metrics`` and ``/healthcheck``
without the login even when it is set. This launcher

- refuses to start unless FLOWER_BASIC_AUTH (read through etl.settings) holds well-formed
  ``user:password[,user:password]`` logins: exit 2 and one line saying what to set;
- puts ``/metrics`` and ``/healthcheck`` behind the same login as every other page (Tornado's
  ``authenticated`` check, patched into this process only, never at import of an etl module);
- runs ``celery -A etl.worker flower`` with the given options, and stops before serving if
  Flower's own options (a ``--basic_auth`` argument, a ``flowerconfig.py``) replaced the logins.
"""

import sys
from collections.abc import Callable, Sequence
from typing import Any

from etl import settings
from etl.errors import ConfigError

NAME = "etl flower"
# Flower 2.2's handlers that serve without the login (flower/views/monitor.py has no @authenticated).
UNGUARDED = ("Metrics", "Healthcheck")


def protect_monitor_pages() -> None:
    """Make Flower's metrics and health handlers ask for the login like every other page.

    With basic auth set, Flower's ``get_current_user`` answers 401 for missing or wrong
    credentials; ``tornado.web.authenticated`` is what makes a handler ask it.
    """
    import tornado.web
    from flower.views import monitor  # type: ignore[import-untyped]

    for name in UNGUARDED:
        handler = getattr(monitor, name)
        if not getattr(handler.get, "etl_login_required", False):
            guarded: Any = tornado.web.authenticated(handler.get)
            guarded.etl_login_required = True
            handler.get = guarded


def keep_logins(logins: Sequence[str]) -> None:
    """Stop Flower, once it has read its options, unless its basic auth is exactly ``logins``."""
    from flower import command  # type: ignore[import-untyped]

    read_options: Callable[[], None] = command.extract_settings

    def checked() -> None:
        if list(command.options.basic_auth or ()) != list(logins):
            print(
                f"{NAME}: Flower's basic auth is not FLOWER_BASIC_AUTH (a --basic_auth option or a flowerconfig.py "
                f"replaced it); give the logins only in FLOWER_BASIC_AUTH; {settings.FLOWER_HINT}",
                file=sys.stderr,
            )
            raise SystemExit(2)
        read_options()

    command.extract_settings = checked


def main(argv: Sequence[str] | None = None) -> int:
    """Run Flower for etl.worker with ``argv`` as Flower's options; 2 if it must not start."""
    try:
        logins = settings.load().require_flower_logins()
    except ConfigError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    protect_monitor_pages()
    keep_logins(logins)
    from celery.bin.celery import celery

    args = list(sys.argv[1:] if argv is None else argv)
    celery.main(args=["-A", "etl.worker", "flower", *args], prog_name="celery", auto_envvar_prefix="CELERY")
    return 0  # celery.main exits by itself (SystemExit); here only if it returned


if __name__ == "__main__":
    sys.exit(main())
