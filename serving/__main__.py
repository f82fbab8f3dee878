"""`python -m serving`: run the model server with uvicorn (settings from the environment)."""

from __future__ import annotations

import logging
import os
import sys

from tasks.errors import EXIT_BAD_INPUT, BadInput


def main() -> int:
    import uvicorn

    from serving.app import create_app
    from serving.observe import configure_logging
    from serving.settings import ServerSettings

    configure_logging(os.environ.get("AIGC_LOG_FORMAT", "json"))
    try:
        settings = ServerSettings.from_env()
    except BadInput as exc:
        logging.error("%s", exc)
        return EXIT_BAD_INPUT
    # SIGTERM: stop accepting, finish what was accepted (up to the drain timeout), then
    # stop the models; the pod's terminationGracePeriodSeconds should exceed the timeout.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False, log_config=None,
                timeout_graceful_shutdown=settings.drain_timeout_s,
                timeout_keep_alive=settings.keep_alive_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
