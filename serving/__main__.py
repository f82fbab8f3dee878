"""`python -m serving`: run the model server with uvicorn (settings from the environment)."""

from __future__ import annotations

import logging
import sys

from tasks.errors import EXIT_BAD_INPUT, BadInput


def main() -> int:
    import uvicorn

    from serving.app import create_app
    from serving.settings import ServerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        settings = ServerSettings.from_env()
    except BadInput as exc:
        logging.error("%s", exc)
        return EXIT_BAD_INPUT
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
