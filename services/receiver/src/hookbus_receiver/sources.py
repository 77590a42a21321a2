"""Source kinds at run time: how each sender proves who it is and where its facts live."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.events import token

from . import registries
from .config import (
    DockerhubSource,
    FromRequest,
    GithubSource,
    GitlabSource,
    HarborSource,
    HmacSource,
    HookdeckSource,
    JwtSource,
    NoneSource,
    SourceConfig,
    StandardWebhooksSource,
    TokenSource,
)
from .imagepush import image_info
from .inbound import Facts
from .refusals import BadBody
from .signatures import (
    JwtKey,
    VerificationError,
    decode_standard_secret,
    load_jwt_keys,
    url_token_matches,
    verify_github,
    verify_gitlab_token,
    verify_harbor,
    verify_hmac,
    verify_hookdeck,
    verify_jwt,
    verify_standard_webhooks,
    verify_token,
)

# Headers worth keeping with the raw body: enough to re-verify and audit a delivery.
_KEPT_COMMON = (
    "content-type",
    "user-agent",
    "idempotency-key",
    "x-request-id",
    "x-forwarded-for",
)
_KEPT_BY_KIND: dict[str, tuple[str, ...]] = {
    "github": (
        "x-github-event",
        "x-github-delivery",
        "x-github-hook-id",
        "x-github-hook-installation-target-id",
        "x-github-hook-installation-target-type",
        "x-hub-signature-256",
        "x-hub-signature",
    ),
    "gitlab": (
        "x-gitlab-event",
        "x-gitlab-event-uuid",
        "x-gitlab-webhook-uuid",
        "x-gitlab-instance",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ),
    "standard-webhooks": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "hookdeck": (
        "x-hookdeck-signature",
        "x-hookdeck-signature-2",
        "x-hookdeck-eventid",
        "x-hookdeck-requestid",
        "x-hookdeck-attempt-count",
        "x-hookdeck-source-name",
        "x-hookdeck-verified",
        "x-hookdeck-original-ip",
    ),
}
# Headers that carry a credential themselves: never kept, whatever the config says.
_NEVER_KEPT = frozenset({"authorization", "proxy-authorization", "cookie", "x-gitlab-token"})

# The header each kind names its delivery id in, first found wins.
_DELIVERY_HEADERS: dict[str, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitlab": ("x-gitlab-event-uuid", "idempotency-key", "webhook-id"),
    "standard-webhooks": ("webhook-id",),
    "hookdeck": ("x-hookdeck-eventid", "idempotency-key"),
}
_DEFAULT_DELIVERY_HEADERS = ("idempotency-key",)

Verifier = Callable[[Mapping[str, str], bytes, float], None]


def _secrets(src: SourceConfig | Any) -> list[bytes]:
    return [s.bytes() for s in src.secrets]


def _standard_keys(where: str, secrets: list[Any]) -> list[bytes]:
    try:
        return [decode_standard_secret(s.value or "") for s in secrets]
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _verifier(where: str, src: SourceConfig) -> Verifier:
    """The check for ``src``, with every secret and key prepared once."""
    match src:
        case GithubSource():
            keys, sha1 = _secrets(src), src.allow_sha1
            return lambda h, b, now: verify_github(h, b, keys, allow_sha1=sha1)
        case GitlabSource():
            tokens = [s.bytes() for s in src.token]
            signing = _standard_keys(f"{where}.signing", src.signing)
            tolerance = src.tolerance

            def gitlab(h: Mapping[str, str], b: bytes, now: float) -> None:
                if tokens:
                    verify_gitlab_token(h, tokens)
                if signing:
                    verify_standard_webhooks(h, b, signing, now=now, tolerance=tolerance)

            return gitlab
        case StandardWebhooksSource():
            keys, tol = _standard_keys(f"{where}.secrets", src.secrets), src.tolerance

            def standard(h: Mapping[str, str], b: bytes, now: float) -> None:
                verify_standard_webhooks(h, b, keys, now=now, tolerance=tol)

            return standard
        case HookdeckSource():
            keys = _secrets(src)
            return lambda h, b, now: verify_hookdeck(h, b, keys)
        case HmacSource():
            keys, layout, tolerance = _secrets(src), src.layout(), src.tolerance
            assert layout["header"]  # the loader checked it

            def generic(h: Mapping[str, str], b: bytes, now: float) -> None:
                verify_hmac(h, b, keys, **layout, tolerance=tolerance, now=now)

            return generic
        case JwtSource():
            return _jwt_verifier(where, src)
        case TokenSource():
            keys, mode, header = _secrets(src), src.mode, src.header
            return lambda h, b, now: verify_token(h, keys, mode=mode, header_name=header)
        case NoneSource():
            return lambda h, b, now: None
        case DockerhubSource():
            # The secret is the URL's `token`, checked by Source.verify before this.
            return lambda h, b, now: None
        case HarborSource():
            keys = _secrets(src)
            return lambda h, b, now: verify_harbor(h, keys)


def _jwt_verifier(where: str, src: JwtSource) -> Verifier:
    keys: list[JwtKey] = [JwtKey(kid=None, key=s.bytes()) for s in src.secrets]
    if src.keys is not None:
        try:
            keys += load_jwt_keys(src.keys)
        except (ValueError, TypeError) as exc:
            key = "key_file" if src.key_file else "keys"
            raise ConfigError(f"{where}.{key}: {exc}") from None
    algorithms = tuple(src.allowed_algorithms())
    # An empty string in the config means "present, any value".
    required = {k: (None if v == "" else v) for k, v in src.required_claims.items()}
    also = _verifier(f"{where}.also", src.also) if src.also is not None else None
    strict_kid = src.kid_is_strict()

    def check(h: Mapping[str, str], b: bytes, now: float) -> None:
        verify_jwt(
            h, keys=keys, algorithms=algorithms, issuer=src.issuer, audience=src.audience,
            subject=src.subject, required_claims=required, now=now, leeway=src.leeway,
            header=src.header, strict_kid=strict_kid,
        )  # fmt: skip
        if also is not None:
            also(h, b, now)

    return check


def lookup(value: Any, path: str) -> Any:
    """The value at a dotted path (`event.id`, `items.0.id`), or None."""
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _scalar(value: Any) -> str | None:
    """A fact as text: strings and numbers only (a JSON object is not an id)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        text = str(value)
        return text or None
    return None


def _from(where: FromRequest, headers: Mapping[str, str], body: Any) -> str | None:
    if where.header:
        return headers.get(where.header.lower()) or None
    if where.json_field:
        return _scalar(lookup(body, where.json_field))
    return None


def _ref(ref: str | None, ref_type: str | None = None) -> tuple[str | None, str | None]:
    """(branch, tag) from a git ref."""
    if ref is None:
        return None, None
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/")
    if ref_type == "branch":
        return ref, None
    if ref_type == "tag":
        return None, ref
    return None, None


class Source:
    """One configured source, ready to check and read deliveries."""

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config
        self.kind = config.kind
        self._verify = _verifier(f"sources.{name}", config)
        secret_headers = set(_NEVER_KEPT)
        if isinstance(config, TokenSource) and config.header:
            secret_headers.add(config.header.lower())
        if isinstance(config, JwtSource):
            secret_headers.add(config.header.lower())
        extra: list[str] = []
        if isinstance(config, HmacSource):
            extra += [h for h in (config.header, config.timestamp_header) if h]
        for where in (config.idempotency, config.event_type):
            if where is not None and where.header:
                extra.append(where.header)
        if isinstance(config, JwtSource) and isinstance(config.also, HmacSource):
            extra += [h for h in (config.also.header, config.also.timestamp_header) if h]
        also_kind = config.also.kind if isinstance(config, JwtSource) and config.also else None
        kept = (
            *_KEPT_COMMON,
            *_KEPT_BY_KIND.get(self.kind, ()),
            *_KEPT_BY_KIND.get(also_kind or "", ()),
            *(h.lower() for h in extra),
        )
        self._kept = tuple(dict.fromkeys(h for h in kept if h not in secret_headers))
        self._delivery_headers = _DELIVERY_HEADERS.get(self.kind, _DEFAULT_DELIVERY_HEADERS)
        # Sources whose credential is in the URL, `/hooks/<source>?token=<secret>`: those
        # whose sender can set no header (Docker Hub).
        self._url_secrets = _secrets(config) if isinstance(config, DockerhubSource) else None

    @property
    def takes_url_token(self) -> bool:
        return self._url_secrets is not None

    def verify(
        self, headers: Mapping[str, str], body: bytes, now: float, url_token: str | None = None
    ) -> None:
        """Raise VerificationError unless the delivery proves it comes from this source.
        ``url_token`` is the URL's ``token`` parameter, the proof of a source that takes
        its secret there (and ignored by the others)."""
        if self._url_secrets is not None and not url_token_matches(url_token, self._url_secrets):
            raise VerificationError("bad_token")
        self._verify(headers, body, now)

    def kept_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {h: headers[h] for h in self._kept if h in headers}

    def pushed(self, headers: Mapping[str, str], body: Any) -> registries.Pushed | None:
        """The image push a registry's delivery announces, if it is one."""
        match self.config:
            case DockerhubSource():
                return registries.dockerhub(body)
            case HarborSource():
                return registries.harbor(body)
            case GithubSource():
                return registries.github_package(headers.get("x-github-event"), body)
            case _:
                return None

    def image(self, headers: Mapping[str, str], body: Any) -> ev.ImageInfo | None:
        """The pushed image a delivery names (projects redeploy on it), if any."""
        pushed = self.pushed(headers, body)
        return None if pushed is None else image_info(pushed.image)

    def facts(self, headers: Mapping[str, str], body: Any) -> Facts:
        """The facts of a verified delivery whose JSON body (an object) is ``body``."""
        c = self.config
        delivery = (
            _from(c.idempotency, headers, body)
            if c.idempotency is not None
            else next((v for h in self._delivery_headers if (v := headers.get(h))), None)
        )
        repository = branch = tag = commit = sender = None
        event_type = c.event_type.default if c.event_type is not None else "webhook"
        match c:
            case GithubSource():
                event_type = headers.get("x-github-event") or "unknown"
                repository = _scalar(lookup(body, "repository.full_name"))
                branch, tag = _ref(_scalar(body.get("ref")), _scalar(body.get("ref_type")))
                commit = _scalar(body.get("after"))
                sender = _scalar(lookup(body, "sender.login"))
            case GitlabSource():
                event_type = token(headers.get("x-gitlab-event") or "unknown")
                repository = _scalar(lookup(body, "project.path_with_namespace"))
                branch, tag = _ref(_scalar(body.get("ref")))
                commit = _scalar(body.get("checkout_sha"))
                sender = _scalar(body.get("user_username"))
            case StandardWebhooksSource():
                # The spec's payload shape is {"type": …, "timestamp": …, "data": …}.
                event_type = _scalar(body.get("type")) or event_type
            case DockerhubSource() | HarborSource():
                # Rules match a registry push like the image-push URL's: event "push",
                # repository the image's path, tag its tag.
                pushed = self.pushed(headers, body)
                other = "unknown" if isinstance(c, DockerhubSource) else _scalar(body.get("type"))
                event_type = registries.PUSH if pushed else token(other or "unknown")
                if pushed is not None:
                    repository, tag = pushed.image.path, pushed.image.tag
                    sender = pushed.pusher
                    if c.idempotency is None:
                        delivery = delivery or pushed.delivery_id
            case _:
                pass
        if isinstance(c, GithubSource) and event_type in registries.GITHUB_PACKAGE_EVENTS:
            # A container version published to ghcr.io: rules see its tag.
            pushed = self.pushed(headers, body)
            tag = tag or (pushed.image.tag if pushed is not None else None)
        if c.event_type is not None:
            event_type = _from(c.event_type, headers, body) or c.event_type.default
        f = c.fields
        if f.repository:
            repository = _scalar(lookup(body, f.repository))
        if f.branch:
            branch, tag = _ref(_scalar(lookup(body, f.branch)), "branch")
            if branch is not None and branch.startswith("refs/"):
                branch = None
        if f.commit:
            commit = _scalar(lookup(body, f.commit))
        if f.sender:
            sender = _scalar(lookup(body, f.sender))
        return Facts(
            event_type=event_type,
            delivery_id=delivery,
            repository=repository,
            branch=branch,
            tag=tag,
            commit=commit,
            sender=sender,
        )


__all__ = [
    "BadBody",
    "Facts",
    "Source",
    "VerificationError",
    "lookup",
]
