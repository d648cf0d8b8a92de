"""A JupyterHub access token that stays current: the OIDC token Chameleon's JupyterHub holds
for its user, asked from the hub's API whenever it is missing or about to expire.

The hub sets ``OS_ACCESS_TOKEN`` once, when the user's server starts; the token expires while
the server runs, so a notebook opened later would fail to authenticate with it. python-chi
(``chi/context.py`` ``_SessionWithAccessTokenRefresh``, ``chi/jupyterhub.py``
``refresh_access_token``) refreshes it within 60 s of expiry from ``GET
<JUPYTERHUB_API_URL>/users/<JUPYTERHUB_USER>`` (``auth_state.access_token`` /
``expires_at``); this module does the same in a keystoneauth plugin subclass. The token
is never logged.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


#: Refresh the hub's access token when it expires within this many seconds
#: (python-chi's ``_SessionWithAccessTokenRefresh.REFRESH_THRESHOLD``).
REFRESH_THRESHOLD = 60.0


def in_hub(env: Mapping[str, str]) -> bool:
    return bool(env.get("JUPYTERHUB_API_URL") and env.get("JUPYTERHUB_API_TOKEN"))


def plugin_class():
    from keystoneauth1.identity import v3

    class HubAccessToken(v3.OidcAccessToken):
        """keystoneauth's OidcAccessToken whose ``access_token`` is asked from the
        JupyterHub API whenever it is missing or expires within ``REFRESH_THRESHOLD``
        seconds, as python-chi does (``chi/context.py``, ``chi/jupyterhub.py``): the hub
        sets ``OS_ACCESS_TOKEN`` once, when the server starts, and the token expires
        while the server runs. Keystoneauth reads ``access_token`` each time it
        (re-)authenticates, so a notebook opened hours later gets a current one. A
        subclass, not python-chi's patch of the OidcAccessToken class for every user."""

        def __init__(self, *args, hub_env: Mapping[str, str],
                     clock: Callable[[], float] | None = None, **kwargs):
            self._hub_env = dict(hub_env)
            self._clock = clock or _now
            self._token: str | None = None
            self._expires_at = 0.0  # unknown: refresh on first use
            super().__init__(*args, **kwargs)

        @property
        def access_token(self) -> str | None:
            if not self._token or self._expires_at - self._clock() < REFRESH_THRESHOLD:
                fresh = refresh(self._hub_env)
                if fresh:
                    self._token, self._expires_at = fresh
                elif self._token:
                    log.warning("using the JupyterHub access token from the environment; "
                                "it may have expired")
            return self._token

        @access_token.setter
        def access_token(self, value: str | None) -> None:
            # the initial OS_ACCESS_TOKEN: used only when the hub cannot give a fresh one
            self._token = value
            self._expires_at = 0.0

    return HubAccessToken


def _expiry(value: Any) -> float:
    """auth_state's ``expires_at``: epoch seconds (python-chi subtracts ``time.time()``),
    or an ISO date-time; 0 (refresh next time) when absent or unreadable."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            try:
                return _iso_seconds(value)
            except ValueError:
                return 0.0
    return 0.0


def refresh(env: Mapping[str, str]) -> tuple[str, float] | None:
    """``GET <JUPYTERHUB_API_URL>/users/<JUPYTERHUB_USER>`` with the hub token: the user's
    ``auth_state.access_token`` and ``expires_at`` (Chameleon's JupyterHub exposes them
    to the user's server), or None (logged; the token itself never is)."""
    import requests

    try:
        r = requests.get(f"{env['JUPYTERHUB_API_URL']}/users/{env.get('JUPYTERHUB_USER', '')}",
                         headers={"authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"},
                         timeout=10)
        r.raise_for_status()
        state = r.json().get("auth_state") or {}
    except Exception as exc:
        log.warning("could not refresh the JupyterHub access token: %s", type(exc).__name__)
        return None
    token = state.get("access_token")
    if not token:
        log.warning("the JupyterHub API returned no access token (is auth_state enabled?)")
        return None
    return token, _expiry(state.get("expires_at"))


def _now() -> float:
    return time.time()


def _iso_seconds(text: str) -> float:
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)).timestamp()
