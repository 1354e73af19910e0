"""What runs once before the node does: the config read and checked, and the TLS context.

node.app.start() imports this module for that moment only and unloads it (with node.config and
node.settings) before the node is built, so the heap the node runs in does not hold their code.
"""

import os
import ssl

from node import board, bootcount, unload
from node.files import CLOCK_PATH, CONFIG_PATH, DEPLOY_MARKER, SECRETS_PATH, SETTINGS_PATH
from node.sntp import known_time


def boot():
    """(config in force, saved settings, secrets, TLS context) for the node, or None when it
    must not run and safe mode has run instead."""
    if deploy_unfinished():
        _safe_mode("a deploy did not finish (%s); run make deploy again" % DEPLOY_MARKER)
        return None
    configured = configure()
    if configured is not None and bootcount.safe_mode:
        cfg, _saved, secrets, ctx = configured
        _safe_mode(bootcount.safe_mode, cfg, secrets, ctx)
        return None
    return configured


def _safe_mode(reason, cfg=None, secrets=None, ctx=None):
    from node import safemode  # in safe mode only

    safemode.run(reason, cfg, secrets, ctx)


def tls_context(mqtt):
    """A client context trusting the CAs of the file at mqtt["ca_path"] (node.cafile says
    which) and, with mqtt["cert_path"], presenting the node's certificate (node.clientcert)."""
    from node import cafile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    clock = known_time(board.rtc_time(), CLOCK_PATH)
    try:
        cafile.load(ctx, mqtt["ca_path"], *clock)
        if mqtt["cert_path"] is not None:
            from node import clientcert  # only for a broker that wants one

            try:
                clientcert.load(ctx, mqtt["cert_path"], mqtt["key_path"], *clock)
            finally:
                del clientcert
    finally:
        del cafile
        unload("cafile", "clientcert", "x509")  # read once, at boot
    return ctx


def deploy_unfinished():
    try:
        os.stat(DEPLOY_MARKER)
    except OSError:
        return False
    return True


def load():
    """(config with persisted settings applied, settings, secrets). The parsed config.json is
    not kept: the commands that change settings read it again (node.commands)."""
    from node import config, settings

    raw = config.read_json(CONFIG_PATH)
    # accepted() checks config.json itself first (its errors mean safe mode). A saved setting
    # that no longer fits it (say, the DHT model changed) is logged and dropped: the user's file
    # wins, and the board does not go into safe mode over it.
    saved = settings.accepted(raw, settings.load(SETTINGS_PATH))
    cfg = config.validate(settings.overlay(raw, saved), CONFIG_PATH)
    secrets = config.validate_secrets(config.read_json(SECRETS_PATH), SECRETS_PATH)
    return config.resolve_paths(cfg, CONFIG_PATH), saved, secrets


def configure():
    """(cfg, saved, secrets, TLS context); None when a config error sent it to safe mode."""
    from node import config

    try:
        cfg, saved, secrets = load()
        return cfg, saved, secrets, tls_context(cfg["mqtt"])
    except config.ConfigError as e:
        _safe_mode(e)
    return None
