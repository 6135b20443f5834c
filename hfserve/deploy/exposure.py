"""Whether a deployment would serve its models to anyone who can reach it, decided before render.

Every rendered deployment is reachable: a Service answers every pod in the cluster, an Ingress
the internet. With an empty key Secret its pods would have no keys, so the renderer refuses
unless auth was turned off on purpose, the way ``hfserve serve`` refuses a non-loopback host.
"""

from __future__ import annotations

from dataclasses import replace

from hfserve.core.keystore import KeyStore
from hfserve.deploy.options import RenderOptions
from hfserve.errors import ConfigError
from hfserve.settings import Settings

__all__ = ["resolve_keys"]


def resolve_keys(settings: Settings, options: RenderOptions) -> tuple[RenderOptions, str]:
    """The options with the keys file the Secret will hold, and a line saying what auth it gives.

    Without ``--keys-file`` the Secret holds the keys of ``settings.keys_file`` (the file
    ``hfserve keys create`` writes and ``hfserve serve`` reads) when it exists.

    Raises:
        ConfigError: the Secret would hold no key and auth was not turned off (``--no-auth``);
            or the keys file is corrupt; or the options are invalid.
    """
    options.validate()  # a mistyped name is the first thing to hear about
    if settings.auth is False:
        return options, "auth off: --no-auth (the pods serve without API keys)"
    keys_file = options.keys_file
    if keys_file is None and settings.keys_file.is_file():
        keys_file = settings.keys_file
    count = (
        len(KeyStore(keys_file).list_keys()) if keys_file is not None and keys_file.is_file() else 0
    )
    if not count and settings.auth is None:
        exposed = "Service and Ingress" if options.ingress else "Service"
        where = f"{keys_file} holds no API key" if keys_file is not None else "no keys file"
        raise ConfigError(
            f"refusing to render a reachable {exposed} with an empty API key Secret ({where}): "
            "anyone who can reach it could use the models. Create a key (hfserve keys create) "
            "and pass --keys-file, or pass --no-auth to deploy without keys on purpose",
            param="keys_file",
        )
    return replace(options, keys_file=keys_file), settings.model_copy(
        update={"keys_file": keys_file}
    ).auth_status(count)
