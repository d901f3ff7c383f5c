"""The API's routers, one per group; `create_app` includes them behind the bearer-token guard."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from ..dependencies import server_of
from ..server import Server

ServerDep = Annotated[Server, Depends(server_of)]  # the application's loaded runs and jobs
