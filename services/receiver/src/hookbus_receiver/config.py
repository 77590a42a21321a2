"""The receiver's config: its ``[receiver]`` section and its ``[sources.*]``, with secrets.

Each source kind is a tagged struct (``kind = "github"`` …) sharing the common per-source
options of :class:`_Source`. The structs only declare and check; :func:`load` resolves
their secrets and key files (only the receiver ever does), and ``sources.Source`` turns a
source into its verifier.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT as _STRUCT
from hookbus_common.settings import HeaderName, NonNegativeFloat, Port, PositiveFloat, PositiveInt

from .respond import wait_seconds
from .signatures import (
    HMAC_PRESETS,
    HmacAlgorithm,
    HmacFormat,
    HmacLayout,
    HmacPreset,
    decode_standard_secret,
)

# A dotted path into a JSON body: `event.id`, `data.object.id`, `items.0.id`.
JsonPath = Annotated[str, msgspec.Meta(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


class Secret(core.Secret, **_STRUCT):
    """A source's secret (:class:`~hookbus_common.settings.Secret`) and the key it makes."""

    def bytes(self) -> bytes:
        if self.value is None:  # the loader resolves every secret, so this is a programming error
            raise ConfigError("secret used before it was resolved")
        return self.value.encode()


class RateLimit(msgspec.Struct, **_STRUCT):
    """A token bucket per source and per receiver process (so per replica)."""

    per_second: PositiveFloat
    burst: Annotated[int, msgspec.Meta(ge=1)] | None = None

    @property
    def capacity(self) -> float:
        return float(self.burst) if self.burst is not None else max(1.0, self.per_second)


class FromRequest(msgspec.Struct, **_STRUCT):
    """Where a value comes from: a header, or a dotted path into the JSON body."""

    header: HeaderName | None = None
    json_field: JsonPath | None = None


class EventTypeFrom(FromRequest, **_STRUCT):
    # Used when neither is configured, or when the header or field is absent.
    default: Annotated[str, msgspec.Meta(min_length=1)] = "webhook"


class Fields(msgspec.Struct, **_STRUCT):
    """JSON paths of the facts rules can match on, for kinds that do not know them."""

    repository: JsonPath | None = None
    branch: JsonPath | None = None  # `refs/heads/x` gives branch x, `refs/tags/v1` tag v1
    commit: JsonPath | None = None
    sender: JsonPath | None = None


class _Source(msgspec.Struct, **_STRUCT):
    """Options every source kind has."""

    # Several may be active at once, so that rotating a secret never drops a delivery.
    secrets: list[Secret] = []
    tenant: str = "default"
    # CIDRs; a client outside them gets the same 404 as an unknown path.
    allow_ips: list[str] = []
    # Only a peer in these CIDRs may name the client in X-Forwarded-For.
    trusted_proxies: list[str] = []
    rate_limit: RateLimit | None = None
    # Where the delivery id comes from; none configured: the kind's own header.
    idempotency: FromRequest | None = None
    # Where the event type comes from (generic kinds); the sender's own kinds know it.
    event_type: EventTypeFrom | None = None
    fields: Fields = Fields()
    # Hold the answer until the first job the webhook caused ends, at most this long
    # ("10s", or seconds), and answer with its outcome (docs/sync.md).
    respond_wait: str | float | None = None

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def secret_lists(self) -> dict[str, list[Secret]]:
        """Every list of secrets this source holds, by key, for the loader to resolve."""
        return {"secrets": self.secrets}

    def needs_secrets(self) -> bool:
        return True

    def problems(self) -> Iterator[tuple[str, str]]:
        """(key, message) for each thing wrong with this source beyond its types."""
        if self.respond_wait is not None and isinstance(wait_seconds(self.respond_wait), str):
            yield "respond_wait", str(wait_seconds(self.respond_wait))
        for key in ("allow_ips", "trusted_proxies"):
            for i, cidr in enumerate(getattr(self, key)):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    yield f"{key}[{i}]", f"{cidr!r} is not an IP address or CIDR network"
        for key, where in (("idempotency", self.idempotency), ("event_type", self.event_type)):
            if where is not None and where.header and where.json_field:
                yield key, "give a header or a json_field, not both"
        if self.idempotency is not None and not (
            self.idempotency.header or self.idempotency.json_field
        ):
            yield "idempotency", "give a header or a json_field"


class GithubSource(_Source, tag="github", tag_field="kind", **_STRUCT):
    """A GitHub (or GitHub-compatible) sender signing with X-Hub-Signature-256."""

    allow_sha1: bool = False

    @property
    def kind(self) -> str:
        return "github"


class GitlabSource(_Source, tag="gitlab", tag_field="kind", **_STRUCT):
    """GitLab: its secret token (X-Gitlab-Token), its signing token, or both (both checked)."""

    token: list[Secret] = []
    signing: list[Secret] = []
    tolerance: PositiveFloat = 300.0

    @property
    def kind(self) -> str:
        return "gitlab"

    def secret_lists(self) -> dict[str, list[Secret]]:
        return {"token": self.token, "signing": self.signing}

    def needs_secrets(self) -> bool:
        return False  # checked in problems(): token and/or signing, not `secrets`

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from super().problems()
        if self.secrets:
            yield "secrets", "a gitlab source takes `token` and/or `signing`, not `secrets`"
        elif not (self.token or self.signing):
            yield "token", "a gitlab source needs `token` (X-Gitlab-Token) and/or `signing`"


class StandardWebhooksSource(_Source, tag="standard-webhooks", tag_field="kind", **_STRUCT):
    """Standard Webhooks (Svix and others): webhook-id, webhook-timestamp, webhook-signature."""

    tolerance: PositiveFloat = 300.0

    @property
    def kind(self) -> str:
        return "standard-webhooks"


class HookdeckSource(_Source, tag="hookdeck", tag_field="kind", **_STRUCT):
    """Hookdeck: x-hookdeck-signature, and x-hookdeck-signature-2 while rotating."""

    @property
    def kind(self) -> str:
        return "hookdeck"


# A field name in a `t=<ts>,v1=<sig>` header: no `,`, `=` or space.
FieldName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]


class HmacSource(_Source, tag="hmac", tag_field="kind", **_STRUCT):
    """Any HMAC signature: header, layout, algorithm, encoding and what is signed; or a
    sender's preset, which sets them all."""

    preset: HmacPreset | None = None
    header: HeaderName | None = None  # required unless a preset names it; see problems()
    # "plain": the header is the signature; "fields": `t=<ts>,v1=<sig>,…` (Stripe, Convoy).
    # None (here and below): not given, so the preset's value or the default applies.
    format: HmacFormat | None = None
    algorithm: HmacAlgorithm = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    signed: Literal["body", "timestamp+body"] | None = None
    timestamp_header: HeaderName | None = None
    timestamp_field: FieldName | None = None
    signature_field: FieldName | None = None
    separator: str = "."
    tolerance: PositiveFloat = 300.0

    @property
    def kind(self) -> str:
        return "hmac"

    def resolved(self) -> HmacSource:
        """This source with its preset's keys filled in (the loader stores this)."""
        if self.preset is None:
            return self
        return msgspec.structs.replace(self, **HMAC_PRESETS[self.preset])

    def layout(self) -> HmacLayout:
        """The signature's layout: each key as given, else the preset's, else its default."""
        r = self.resolved()
        fields = r.format == "fields"
        return HmacLayout(
            header=r.header or "",
            format=r.format or "plain",
            algorithm=r.algorithm,
            encoding=r.encoding,
            prefix=r.prefix,
            signed=r.signed or ("timestamp+body" if fields else "body"),
            timestamp_header=r.timestamp_header,
            separator=r.separator,
            timestamp_field=r.timestamp_field or "t",
            signature_field=r.signature_field or "v1",
        )

    def _preset_conflicts(self) -> Iterator[tuple[str, str]]:
        if self.preset is None:
            return
        defaults = {f.name: f.default for f in msgspec.structs.fields(self)}
        for key, value in HMAC_PRESETS[self.preset].items():
            given = getattr(self, key)
            if key == "header" and given is not None:
                given = given.lower()  # header names are case-insensitive
            if given != defaults[key] and given != value:
                preset = f'preset = "{self.preset}"'
                why = f"{preset} sets it to {value!r}" if value else f"not used with {preset}"
                yield key, f"{why}: leave it out"

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from super().problems()
        conflicts = list(self._preset_conflicts())
        if conflicts:
            yield from conflicts
            return
        r = self.resolved()
        if not r.header:
            yield "header", "the header that carries the signature is required"
        if r.format != "fields":
            if r.signed == "timestamp+body" and not r.timestamp_header:
                yield "timestamp_header", 'required when signed = "timestamp+body"'
            for key in ("timestamp_field", "signature_field"):
                if getattr(r, key) is not None:
                    yield key, 'only used with format = "fields"'
            return
        if r.prefix:
            yield "prefix", 'not used with format = "fields": the signature is a field'
        if r.timestamp_header:
            yield "timestamp_header", 'not used with format = "fields": the timestamp is a field'
        if r.signed == "body":
            yield "signed", 'format = "fields" always signs the timestamp: leave `signed` out'
        if (r.timestamp_field or "t") == (r.signature_field or "v1"):
            yield "signature_field", "must differ from timestamp_field"


# What a JWT source may require beside the token ("both must pass").
AlsoCheck = GithubSource | HookdeckSource | HmacSource | StandardWebhooksSource

JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip


class JwtSource(_Source, tag="jwt", tag_field="kind", **_STRUCT):
    """A bearer JWT: signature, exp/nbf, and the configured iss, aud, sub and claims."""

    # PEM public keys / certificates or a JWKS document: a file (read once at load) or inline.
    key_file: str | None = None
    keys: str | None = None
    # Default: HS256 for `secrets`, RS256 and ES256 for keys.
    algorithms: Annotated[list[JwtAlgorithm], msgspec.Meta(min_length=1)] | None = None
    issuer: str | None = None
    audience: str | None = None
    subject: str | None = None
    # A claim that must be present; an empty string value means "any value".
    required_claims: dict[str, str | int | bool] = {}
    leeway: NonNegativeFloat = 0.0
    header: HeaderName = "authorization"
    also: AlsoCheck | None = None
    # Refuse a token naming a kid that no key has (unknown_kid). None: yes for a JWKS,
    # whose keys are named; no for PEM keys and secrets, which have no kid to match.
    strict_kid: bool | None = None

    @property
    def kind(self) -> str:
        return "jwt"

    def kid_is_strict(self) -> bool:
        """Whether ``strict_kid`` holds; by default, whether the keys (as loaded) are a JWKS."""
        if self.strict_kid is not None:
            return self.strict_kid
        return self.keys is not None and self.keys.lstrip().startswith("{")

    def allowed_algorithms(self) -> list[str]:
        if self.algorithms is not None:
            return list(self.algorithms)
        return (["HS256"] if self.secrets else []) + (
            ["RS256", "ES256"] if self.key_file or self.keys else []
        )

    def secret_lists(self) -> dict[str, list[Secret]]:
        lists = {"secrets": self.secrets}
        if self.also is not None:
            lists["also.secrets"] = self.also.secrets
        return lists

    def needs_secrets(self) -> bool:
        return False  # keys or secrets, checked in problems()

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from super().problems()
        if self.key_file is not None and self.keys is not None:
            yield "key_file", "give key_file or keys, not both"
        if not (self.key_file or self.keys or self.secrets):
            yield "key_file", "a jwt source needs key_file, keys, or secrets (HS256)"
        algorithms = self.allowed_algorithms()
        if self.secrets and not any(a.startswith("HS") for a in algorithms):
            yield "algorithms", "secrets are HMAC keys: allow HS256, HS384 or HS512"
        if (self.key_file or self.keys) and all(a.startswith("HS") for a in algorithms):
            yield "algorithms", "public keys need RS*, PS*, ES* or EdDSA algorithms"
        if self.also is not None:
            also = self.also
            if not also.secrets:
                yield "also.secrets", f"a {also.kind} check needs a secret"
            for key in ("allow_ips", "trusted_proxies", "rate_limit", "idempotency", "event_type"):
                if getattr(also, key) not in ([], None):
                    yield f"also.{key}", "set it on the source, not inside `also`"
            for key, message in also.problems():
                yield f"also.{key}", message


class TokenSource(_Source, tag="token", tag_field="kind", **_STRUCT):
    """A static credential: a bearer token, basic auth (secrets are user:pass) or a header."""

    mode: Literal["bearer", "basic", "header"] = "bearer"
    header: HeaderName | None = None

    @property
    def kind(self) -> str:
        return "token"

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from super().problems()
        if self.mode == "header" and not self.header:
            yield "header", 'required when mode = "header"'
        if self.mode != "header" and self.header:
            yield "header", 'only used with mode = "header"'


class NoneSource(_Source, tag="none", tag_field="kind", **_STRUCT):
    """No proof at all (Docker Hub pushes): only with `unsigned = true`, best with allow_ips."""

    unsigned: bool = False

    @property
    def kind(self) -> str:
        return "none"

    def needs_secrets(self) -> bool:
        return False

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from super().problems()
        if not self.unsigned:
            yield "unsigned", "a source that checks nothing needs `unsigned = true`"
        if self.secrets:
            yield "secrets", "a none source checks no secret; choose a kind that does"


class DockerhubSource(_Source, tag="dockerhub", tag_field="kind", **_STRUCT):
    """Docker Hub pushes. Docker Hub signs nothing and can send no header of ours, so the
    credential is in the URL it posts to: ``/hooks/<source>?token=<secret>``
    (docs/registries.md)."""

    @property
    def kind(self) -> str:
        return "dockerhub"


class HarborSource(_Source, tag="harbor", tag_field="kind", **_STRUCT):
    """Harbor: the webhook's "Auth Header" arrives as ``Authorization`` and must be one of
    the secrets (given alone, or after a scheme: ``Bearer <secret>``)."""

    @property
    def kind(self) -> str:
        return "harbor"


SourceConfig = (
    GithubSource
    | GitlabSource
    | StandardWebhooksSource
    | HookdeckSource
    | HmacSource
    | JwtSource
    | TokenSource
    | NoneSource
    | DockerhubSource
    | HarborSource
)


def looks_like_keys(text: str) -> bool:
    """A cheap check that text is PEM or JWKS; the receiver parses it fully at start."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = msgspec.json.decode(stripped)
        except msgspec.DecodeError:
            return False
        return isinstance(doc, dict) and ("keys" in doc or "kty" in doc)
    return "-----BEGIN" in stripped and "-----END" in stripped


SourceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]


class ReceiverSettings(msgspec.Struct, **_STRUCT):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: PositiveInt = 1024 * 1024
    # Partner and image-push bodies nested deeper are refused (400) before anything reads them.
    max_json_depth: PositiveInt = 64
    # Partner JSON Schema checks run in worker processes, each within this many seconds.
    validation_timeout: PositiveFloat = 2.0
    validation_workers: PositiveInt = 1
    # Group commit: rows are inserted together when this many wait or this time passes.
    commit_batch_size: PositiveInt = 64
    commit_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    public_url: str | None = None
    workers: PositiveInt = 1
    # Sources with respond_wait: how many requests may wait for their jobs at once (per
    # process; past it a request is answered 202 at once), and how much of a job's output
    # an answer carries.
    respond_max_waiting: PositiveInt = 1000
    respond_max_output_bytes: PositiveInt = 64 * 1024

    def base_url(self) -> str:
        """Where senders reach the receiver: ``public_url``, else its host and port."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


class ReceiverConfig(core.Settings, **_STRUCT):
    """The shared core, the receiver's section and the sources, secrets resolved."""

    receiver: ReceiverSettings = ReceiverSettings()
    sources: dict[SourceName, SourceConfig] = {}


# ----------------------------------------------------------------------- loading


def _check_standard_keys(where: str, secrets: list[Secret]) -> None:
    for i, secret in enumerate(secrets):
        try:
            decode_standard_secret(secret.value or "")
        except ValueError:
            # Never echo the secret itself.
            raise ConfigError(
                f"{where}[{i}]: not a Standard Webhooks secret (whsec_ + base64)"
            ) from None


def _read_jwt_keys(where: str, src: JwtSource, base: Path) -> JwtSource:
    text, key = src.keys, "keys"
    if src.key_file is not None:
        key = "key_file"
        path = Path(src.key_file).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise ConfigError(f"{where}.key_file: cannot read {path}: {reason}") from None
    if text is not None and not looks_like_keys(text):
        raise ConfigError(f"{where}.{key}: expected PEM public keys or a JWKS document")
    # The file is read once, here; the receiver uses the text it was given.
    return msgspec.structs.replace(src, keys=text)


def resolve_source(name: str, src: SourceConfig, base: Path, env: Mapping[str, str]) -> Any:
    """``src`` with every secret read from its value, variable or file, and keys loaded."""
    where = f"sources.{name}"
    for key, message in src.problems():
        raise ConfigError(f"{where}.{key}: {message}")
    lists = src.secret_lists()
    if src.needs_secrets() and not src.secrets:
        raise ConfigError(f"{where}.secrets: a {src.kind} source needs a secret")
    resolved = {
        key: [
            core.resolve_secret(s, f"{where}.{key}[{i}]", base, env) for i, s in enumerate(secrets)
        ]
        for key, secrets in lists.items()
    }
    if isinstance(src, StandardWebhooksSource):
        _check_standard_keys(f"{where}.secrets", resolved["secrets"])
    if isinstance(src, HmacSource):
        src = src.resolved()
    if isinstance(src, JwtSource):
        if isinstance(src.also, StandardWebhooksSource):
            _check_standard_keys(f"{where}.also.secrets", resolved["also.secrets"])
        also = resolved.pop("also.secrets", None)
        if src.also is not None and also is not None:
            src = msgspec.structs.replace(src, also=msgspec.structs.replace(src.also, secrets=also))
        if isinstance(src.also, HmacSource):
            src = msgspec.structs.replace(src, also=src.also.resolved())
        src = _read_jwt_keys(where, src, base)
    elif "signing" in resolved:  # gitlab's signing token is a Standard Webhooks secret
        _check_standard_keys(f"{where}.signing", resolved["signing"])
    return msgspec.structs.replace(src, **resolved)


def _check_each_source(data: dict[str, Any], label: str) -> None:
    # msgspec writes a dict key as `[...]`; check each source alone so the error can say
    # which source it is about.
    sources = data.get("sources")
    if isinstance(sources, dict):
        for name, src in sources.items():
            core.convert(src, SourceConfig, label, f"sources.{name}")


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ReceiverConfig:
    """The receiver's config from the file and environment, every source's secrets read."""
    env = os.environ if env is None else env
    config = core.load(ReceiverConfig, path, env, prepare=_check_each_source)
    base = Path(config.base_dir)
    sources = {name: resolve_source(name, src, base, env) for name, src in config.sources.items()}
    return msgspec.structs.replace(config, sources=sources)
