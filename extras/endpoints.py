"""The endpoints of the command lines that call an OpenAI-compatible API (evaluate.py's judge,
extras/label.py, extras/warm_start.py's teacher): the one redaction of a URL's secrets before it
is printed, the check of a URL given on a command line, and the hint after a refusal.
"""
from __future__ import annotations

from extras.run_io import fail


SECRET_PARAMETERS = {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "password",
                     "secret", "sig", "signature"}


def redact(url: str) -> str:
    """``url`` without the secrets it may carry (user and password, ``api_key``/``key``/``token``
    query parameters): safe to print. The one redaction of every command line (lrpo.py,
    evaluate.py, extras/label.py, extras/warm_start.py)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
    try:
        parts = urlsplit(str(url))
        netloc = parts.netloc
        if "@" in netloc:   # user-info: everything before the last @
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() in SECRET_PARAMETERS else v) for k, v in pairs], safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "(an unparsable URL)"


def scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with the URL and each of its secrets redacted."""
    from urllib.parse import parse_qsl, urlsplit
    text = str(text).replace(str(url), redact(url))
    try:
        parts = urlsplit(str(url))
        secrets = [parts.netloc.rsplit("@", 1)[0]] if "@" in parts.netloc else []
        secrets += [p for s in secrets for p in s.split(":")]
        secrets += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMETERS]
    except ValueError:
        secrets = []
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_url(url: str, flag_name: str) -> str:
    """An http(s) endpoint given on a command line, or a one-line error that prints no secret: a
    key belongs in the environment, never in the URL (urllib cannot send user-info anyway)."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        parts.port   # a non-numeric port raises here
    except ValueError as e:
        fail(f"{flag_name} {redact(url)}: not a valid URL ({scrub(e, url)})")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"{flag_name} {redact(url)}: not an http(s) URL with a host, e.g. http://localhost:8000/v1")
    if "@" in parts.netloc:
        fail(f"{flag_name} {redact(url)}: holds a user name or key; pass the key in the environment "
             f"($OPENAI_API_KEY, or the variable --api-key-env names) and the URL without it")
    return url


def http_hint(error) -> str:
    """What to check after an endpoint's refusal (401/403: the key)."""
    code = getattr(error, "code", None)
    return " (check the API key: the variable named by --api-key-env, default $OPENAI_API_KEY)" \
        if code in (401, 403) else ""
