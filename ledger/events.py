"""The event types of DESIGN.md ("Event types") as immutable pydantic models.

Untrusted input enters through `parse_event`, which turns pydantic's ValidationError into
`InvalidEvent` naming the event id and field. Models hold the canonical form: amounts in integer
micros, rates and weights as decimal strings in lowest form, timestamps in RFC 3339 UTC with
microseconds. `signed_bytes` and `leaf_bytes` are the only places that produce hashed bytes.
No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from . import values
from .canonical import (
    PLAIN_HEAD,
    canonical_bytes,
    event_parts,
    plain,
    plain_usage_body,
    usage_body,
)
from .errors import InvalidEvent

PARTY_KINDS = ("creator", "aggregator", "developer", "deployer", "collective", "operator")
ASSET_KINDS = ("data", "dataset", "model", "output")
PURPOSES = ("train", "finetune", "derive", "infer", "generate")
DERIVE_PURPOSES = frozenset({"derive", "train", "finetune"})
USE_PURPOSES = frozenset({"infer", "generate"})
ANYONE = "*"
OPERATOR = "operator"  # the one operator party, registered by `edvex init`
RESERVED_ID_PREFIX = "edvex:"  # event ids only the operator may use (settlement's own events)
_MAX_METADATA_BYTES = 16_384


def _check(fn: Any, what: str) -> BeforeValidator:
    return BeforeValidator(lambda v: fn(v, what))


Ident = Annotated[str, _check(values.identifier, "identifier")]
Name = Annotated[str, BeforeValidator(lambda v: values.text(v, "name", 256))]
Uri = Annotated[str, BeforeValidator(lambda v: values.text(v, "uri", 2048))]
Timestamp = Annotated[str, _check(values.timestamp, "timestamp")]
Amount = Annotated[int, _check(values.amount_micros, "amount")]
Rate = Annotated[str, _check(values.decimal_string, "decimal")]
Count = Annotated[int, Field(ge=0, le=values.MAX_MICROS)]
PartyKind = Literal["creator", "aggregator", "developer", "deployer", "collective", "operator"]
AssetKind = Literal["data", "dataset", "model", "output"]
Purpose = Literal["train", "finetune", "derive", "infer", "generate"]
DerivePurpose = Literal["train", "finetune", "derive"]


def _hex32(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("must be 64 lowercase hex characters")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be 64 lowercase hex characters") from None
    if value != value.lower():
        raise ValueError("must be 64 lowercase hex characters")
    return value


Hex32 = Annotated[str, BeforeValidator(_hex32)]


def _metadata(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object")
    clean = _json_value(value, "metadata")
    if len(canonical_bytes(clean)) > _MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {_MAX_METADATA_BYTES} bytes")
    return clean or None


_MAX_DEPTH = 32


def _json_value(value: Any, path: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: keys must be strings")
            out[values.nfc(k)] = _json_value(v, f"{path}.{k}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(v, path, depth + 1) for v in value]
    if isinstance(value, float):
        raise ValueError(f"{path}: floats are refused; write numbers as decimal strings")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > values.MAX_MICROS:
            raise ValueError(f"{path}: integer {value} is outside +-(2**53-1)")
        return value
    if isinstance(value, str):
        return values.nfc(value)
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


Metadata = Annotated[dict[str, Any] | None, BeforeValidator(_metadata)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Tier(_Model):
    up_to: Annotated[int, Field(ge=1, le=values.MAX_MICROS)] | None
    per_unit: Rate

    @model_serializer
    def _keep_null(self) -> dict[str, Any]:
        # DESIGN.md writes the last tier with "up_to": null; keep it when None is excluded
        return {"up_to": self.up_to, "per_unit": self.per_unit}


class Terms(_Model):
    """A grant's price: DESIGN.md's `terms` table."""

    share: Rate | None = None
    per_unit: Rate | None = None
    tiers: list[Tier] | None = None
    minimum: Amount | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Terms:
        if self.share is not None and values.as_fraction(self.share) > 1:
            raise ValueError("share must lie in [0, 1]")
        if self.tiers is not None:
            _check_tiers(self.tiers)
            if self.per_unit is not None:
                raise ValueError("tiers replace per_unit; give one of them")
        return self


def _check_tiers(tiers: list[Tier]) -> None:
    if not tiers:
        raise ValueError("tiers must not be empty")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must have up_to null (it takes all remaining units)")
    bounds = [t.up_to for t in tiers[:-1]]
    if any(b is None for b in bounds):
        raise ValueError("only the last tier may have up_to null")
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):  # type: ignore[operator]
        raise ValueError("tier up_to values must increase")


class PartyRegisteredBody(_Model):
    party: Ident
    kind: PartyKind
    public_key: Hex32
    name: Name


class PartyKeyRotatedBody(_Model):
    party: Ident
    public_key: Hex32


class AssetRegisteredBody(_Model):
    asset: Ident
    kind: AssetKind
    content_hash: Hex32 | None = None
    uri: Uri | None = None
    metadata: Metadata = None


class ConsentGrantedBody(_Model):
    grant: Ident
    asset: Ident
    grantee: Ident
    purposes: list[Purpose]
    terms: Terms
    valid_from: Timestamp
    valid_until: Timestamp | None = None

    @model_validator(mode="before")
    @classmethod
    def _sort_purposes(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("purposes"), list | tuple):
            purposes = list(data["purposes"])
            if all(isinstance(p, str) for p in purposes):
                if len(set(purposes)) != len(purposes):
                    raise ValueError("purposes must not repeat")
                data = {**data, "purposes": sorted(purposes)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ConsentGrantedBody:
        if not self.purposes:
            raise ValueError("purposes must name at least one of " + ", ".join(PURPOSES))
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be later than valid_from")
        if self.terms.minimum is not None and self.grantee == ANYONE:
            raise ValueError("a minimum needs a grant that names its grantee, not '*'")
        if self.terms.minimum is not None and not set(self.purposes) & USE_PURPOSES:
            raise ValueError("a minimum is owed for use: the grant needs infer or generate")
        return self


class ConsentRevokedBody(_Model):
    grant: Ident


class Parent(_Model):
    asset: Ident
    weight: Rate
    grant: Ident

    @model_validator(mode="after")
    def _positive(self) -> Parent:
        if values.as_fraction(self.weight) <= 0:
            raise ValueError("weight must be positive")
        return self


class AssetDerivedBody(_Model):
    asset: Ident
    kind: AssetKind
    purpose: DerivePurpose
    parents: list[Parent]
    content_hash: Hex32 | None = None
    uri: Uri | None = None
    metadata: Metadata = None

    @model_validator(mode="before")
    @classmethod
    def _sort_parents(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("parents"), list | tuple):
            parents = list(data["parents"])
            if all(isinstance(p, dict) and isinstance(p.get("asset"), str) for p in parents):
                data = {**data, "parents": sorted(parents, key=lambda p: p["asset"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AssetDerivedBody:
        if not self.parents:
            raise ValueError("parents must name at least one parent")
        assets = [p.asset for p in self.parents]
        if len(set(assets)) != len(assets):
            raise ValueError("parents must not repeat an asset")
        if self.asset in assets:
            raise ValueError("an asset cannot be its own parent")
        return self


class UsageRecordedBody(_Model):
    asset: Ident
    units: Count
    revenue: Amount | None = None
    grant: Ident | None = None


class SettlementClosedBody(_Model):
    run: Annotated[int, Field(ge=1)]
    cut: Annotated[int, Field(ge=0)]
    statements_root: Hex32


class _Event(_Model):
    id: Ident
    actor: Ident
    occurred_at: Timestamp


class PartyRegistered(_Event):
    type: Literal["party.registered"]
    body: PartyRegisteredBody


class PartyKeyRotated(_Event):
    type: Literal["party.key_rotated"]
    body: PartyKeyRotatedBody


class AssetRegistered(_Event):
    type: Literal["asset.registered"]
    body: AssetRegisteredBody


class ConsentGranted(_Event):
    type: Literal["consent.granted"]
    body: ConsentGrantedBody


class ConsentRevoked(_Event):
    type: Literal["consent.revoked"]
    body: ConsentRevokedBody


class AssetDerived(_Event):
    type: Literal["asset.derived"]
    body: AssetDerivedBody


class UsageRecorded(_Event):
    type: Literal["usage.recorded"]
    body: UsageRecordedBody


class SettlementClosed(_Event):
    type: Literal["settlement.closed"]
    body: SettlementClosedBody


Event: TypeAlias = Annotated[
    PartyRegistered
    | PartyKeyRotated
    | AssetRegistered
    | ConsentGranted
    | ConsentRevoked
    | AssetDerived
    | UsageRecorded
    | SettlementClosed,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "party.registered",
    "party.key_rotated",
    "asset.registered",
    "consent.granted",
    "consent.revoked",
    "asset.derived",
    "usage.recorded",
    "settlement.closed",
)
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: object) -> Event:
    """Build an event from untrusted data; every failure is an InvalidEvent."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise _invalid(data, e) from None


def _invalid(data: object, error: ValidationError) -> InvalidEvent:
    event_id = data.get("id") if isinstance(data, dict) else None
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if len(loc) > 1 and loc[0] in EVENT_TYPES:
        loc = loc[1:]  # the discriminator's tag is not a field
    field = ".".join(loc) or "event"
    reason = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        field, reason = "type", f"unknown event type; expected one of {', '.join(EVENT_TYPES)}"
    return InvalidEvent(event_id if isinstance(event_id, str) else None, field, reason)


def usage_event(
    event_id: str,
    actor: str,
    occurred_at: str,
    asset: str,
    units: object,
    revenue: int | None,
    grant: str | None,
) -> UsageRecorded:
    """A usage event built with the same checks as `parse_event` applies to one, without
    pydantic's general machinery (tests hold the two to agreement)."""
    return UsageMaker(actor)(event_id, occurred_at, asset, units, revenue, grant)


class UsageMaker:
    """Usage events of one actor, checked as `usage_event` checks them, remembering the assets,
    grants and bodies already checked: the SDK's hot path, where one service records millions
    of uses of a few assets. Ids and times the SDK made itself (`fresh=True`) are canonical
    already. A body met before is the same immutable model again, so a buffer of thousands of
    uses holds a few bodies, not thousands, for the garbage collector to scan."""

    _REMEMBER = 4096  # distinct identifiers (and bodies) kept; past that the memory starts over

    def __init__(self, actor: object) -> None:
        self._actor = actor
        self._checked_actor: str | None = None
        self._plain_actor = False
        self._known: dict[str, str] = {}
        # each body checked, keyed by its checked values (exactly str, int and None): the model,
        # and its canonical text when its strings are `plain`
        self._bodies: dict[tuple[str, int, int | None, str | None], _KnownBody] = {}

    def entry(
        self, event_id: str, occurred_at: str, asset: object, units: object,
        revenue: int | None, grant: object,
    ) -> UsageEntry | None:  # fmt: skip
        """The use `__call__` would make, as a `UsageEntry`, for an id and time the SDK made
        itself; None when its strings are not all `plain` (the caller makes the model then).
        Checks what `__call__` checks and raises what it raises."""
        known = self._known_body(asset, units, revenue, grant)
        if known is None:
            self._actor_id(event_id)
            known = self._body(event_id, asset, units, revenue, grant)
        text = known[1]
        if text is None or not self._plain_actor:
            return None
        return (event_id, occurred_at, text)

    def __call__(
        self,
        event_id: str,
        occurred_at: str,
        asset: str,
        units: object,
        revenue: int | None,
        grant: str | None,
        *,
        fresh: bool = False,
    ) -> UsageRecorded:
        if not fresh:
            try:
                event_id = values.identifier(event_id, "identifier")
            except ValueError as e:
                raise InvalidEvent(
                    event_id if isinstance(event_id, str) else None, "id", str(e)
                ) from None
        actor = self._actor_id(event_id)
        if not fresh:
            try:
                occurred_at = values.timestamp(occurred_at, "timestamp")
            except ValueError as e:
                raise InvalidEvent(event_id, "occurred_at", str(e)) from None
        known = self._known_body(asset, units, revenue, grant)
        if known is None:
            known = self._body(event_id, asset, units, revenue, grant)
        return _usage_recorded(event_id, actor, occurred_at, known[0])

    def _actor_id(self, event_id: str) -> str:
        """The actor, checked once (an InvalidEvent naming `event_id` if it is not an id)."""
        actor = self._checked_actor
        if actor is None:
            try:
                actor = self._identifier(self._actor)
            except ValueError as e:
                raise InvalidEvent(event_id, "actor", str(e)) from None
            self._checked_actor, self._plain_actor = actor, plain(actor)
        return actor

    def _known_body(
        self, asset: object, units: object, revenue: object, grant: object
    ) -> _KnownBody | None:
        """A body checked before, given with exactly the types it was checked with: known good
        (1 and True, or 1 and 1.0, are equal keys but not the same to the models)."""
        if (type(asset) is str and type(units) is int
                and (revenue is None or type(revenue) is int)
                and (grant is None or type(grant) is str)):  # fmt: skip
            return self._bodies.get((asset, units, revenue, grant))
        return None

    def _body(
        self, event_id: str, asset: object, units: object, revenue: object, grant: object
    ) -> _KnownBody:
        field = "body.asset"
        try:
            asset = self._identifier(asset)
            field = "body.units"
            if type(units) is not int or not 0 <= units <= values.MAX_MICROS:
                raise ValueError(f"units must be a whole number from 0 to {values.MAX_MICROS}")
            field = "body.revenue"
            if revenue is not None and (type(revenue) is not int or
                                        not 0 <= revenue <= values.MAX_MICROS):  # fmt: skip
                revenue = values.amount_micros(revenue, "amount")
            field = "body.grant"
            if grant is not None:
                grant = self._identifier(grant)
        except ValueError as e:
            raise InvalidEvent(event_id, field, str(e)) from None
        fields = {"asset": asset, "units": units, "revenue": revenue, "grant": grant}
        body = _construct(UsageRecordedBody, _USAGE_BODY_FIELDS, fields)
        text = None
        if plain(asset) and (grant is None or plain(grant)):
            text = plain_usage_body(asset, units, revenue, grant)
        if len(self._bodies) >= self._REMEMBER:
            self._bodies.clear()
        known = self._bodies[(asset, units, revenue, grant)] = (body, text)
        return known

    def _identifier(self, value: object) -> str:
        if type(value) is str:
            known = self._known.get(value)
            if known is not None:
                return known
        checked = values.identifier(value, "identifier")
        if len(self._known) >= self._REMEMBER:
            self._known.clear()
        self._known[str(value)] = checked  # a str: identifier refuses anything else
        return checked


_KnownBody: TypeAlias = "tuple[UsageRecordedBody, str | None]"
"""A checked usage body: its model, and its canonical text when its strings are `plain`."""


def _usage_recorded(
    event_id: str, actor: str, occurred_at: str, body: UsageRecordedBody
) -> UsageRecorded:
    """A usage event from fields already checked."""
    return _construct(
        UsageRecorded,
        _EVENT_FIELDS,
        {"id": event_id, "type": "usage.recorded", "actor": actor,
         "occurred_at": occurred_at, "body": body},
    )  # fmt: skip


_M = TypeVar("_M", bound=BaseModel)
_USAGE_BODY_FIELDS: frozenset[str] = frozenset(("asset", "units", "revenue", "grant"))
_EVENT_FIELDS: frozenset[str] = frozenset(("id", "type", "actor", "occurred_at", "body"))
# BaseModel's own slots, set through their descriptors: the quickest way to fill an instance
_SLOTS = BaseModel.__dict__
_set_dict = _SLOTS["__dict__"].__set__
_set_fields_set = _SLOTS["__pydantic_fields_set__"].__set__
_set_extra = _SLOTS["__pydantic_extra__"].__set__
_set_private = _SLOTS["__pydantic_private__"].__set__


def _construct(cls: type[_M], names: frozenset[str], fields: dict[str, Any]) -> _M:
    """An instance from already-validated fields, as `model_construct` makes it but without its
    per-call bookkeeping (every field is given, none is private or extra). The set of fields
    given is one frozenset shared by every instance: millions of usage events pass through the
    SDK, and a set each would be that many more objects for the garbage collector to scan."""
    obj = object.__new__(cls)
    _set_dict(obj, fields)
    _set_fields_set(obj, names)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_FLAT_BODIES = (
    UsageRecordedBody,
    ConsentRevokedBody,
    PartyRegisteredBody,
    PartyKeyRotatedBody,
    SettlementClosedBody,
)


def body_dict(event: Event) -> dict[str, Any]:
    """The canonical body: optional fields left out when absent."""
    body = event.body
    if isinstance(body, _FLAT_BODIES):  # no nested models: the fields are the JSON
        return {k: v for k, v in body.__dict__.items() if v is not None}
    return body.model_dump(exclude_none=True)


def signed_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "actor": event.actor,
        "occurred_at": event.occurred_at,
        "body": body_dict(event),
    }


def signed_bytes(event: Event, signed: dict[str, Any] | None = None) -> bytes:
    """RFC 8785 bytes of `id, type, actor, occurred_at, body` (DESIGN.md, "The log")."""
    signed = signed_dict(event) if signed is None else signed
    return canonical_bytes(signed, shape_known=shape_known(event))


def event_hash(event: Event, signed: dict[str, Any] | None = None) -> bytes:
    return hashlib.sha256(signed_bytes(event, signed)).digest()


Encoded: TypeAlias = tuple[bytes, bytes, bytes]
"""An event's canonical body, and the two parts of its canonical bytes around that body (see
`canonical.event_parts`): the hash is over `head + tail`, the leaf over `head + recorded + tail`."""


def encode_all(events: Sequence[Event]) -> list[Encoded]:
    """`encode` of each event. When every string of the usage events is `plain` (one check over
    all of them), those are written from text templates: the SDK's batches are usage events of
    one actor with the SDK's own ids and times, all plain."""
    uses = [e for e in events if type(e) is UsageRecorded]
    strings = "".join(
        [e.id + e.occurred_at + e.actor + e.body.asset + (e.body.grant or "") for e in uses]
    )
    if not uses or not plain(strings):
        return [encode(e) for e in events]
    out: list[Encoded] = []
    # the SDK hands out one body model for equal bodies: each is written once per batch (the
    # models are alive throughout, so their ids are theirs)
    bodies: dict[int, tuple[str, bytes]] = {}
    for e in events:
        if type(e) is not UsageRecorded:
            out.append(encode(e))
            continue
        b = e.body
        written = bodies.get(id(b))
        if written is None:
            text = plain_usage_body(b.asset, b.units, b.revenue, b.grant)
            written = bodies[id(b)] = (text, text.encode())
        head = PLAIN_HEAD % (e.actor, written[0], e.id, e.occurred_at)
        out.append((written[1], head.encode(), _USAGE_TAIL))
    return out


_USAGE_TAIL = event_parts("", "usage.recorded", "", "", b"")[1]

UsageEntry: TypeAlias = tuple[str, str, str]
"""A use the SDK made itself, `(id, occurred_at, body)`, the body as its canonical text, with
every string `plain`: the form the SDK's uses travel in from the buffer to the log's rows. A
tuple of strings is an object the garbage collector stops tracking; a model is two it scans
again on every full pass while a buffer of thousands waits."""

Entry: TypeAlias = "Event | UsageEntry"
"""What a batch holds: events as models, and the SDK's own uses as `UsageEntry`."""


def check_entries(entries: Sequence[UsageEntry]) -> dict[str, UsageRecordedBody]:
    """Check `UsageEntry`s as `parse_event` checks a use, and return the body of each distinct
    body text: the id is a UUIDv7 in lower-case hex (as `values.uuid7` makes it), the time is
    canonical, the body the canonical text of a valid usage body with `plain` strings. The ids
    and times of a whole batch are checked in a few passes in C (`_all_match`); the rest is
    once per distinct body and second. An InvalidEvent names the first entry that fails."""
    if not entries:
        return {}
    try:
        if {len(e) for e in entries} != {3}:
            raise TypeError
        ids = "".join([e[0] for e in entries])
        times = "".join([e[1] for e in entries])
    except TypeError:
        raise InvalidEvent(None, "events", "an SDK use is a tuple of three strings "
                           "(id, occurred_at, body)") from None  # fmt: skip
    if not (
        _all_match(ids, len(entries), _ID_FORM) and _all_match(times, len(entries), _TIME_FORM)
    ):
        for e in entries:  # the first that fails, for the error
            if not _all_match(e[0], 1, _ID_FORM):
                raise InvalidEvent(e[0], "id", "an SDK use's id is a UUIDv7 in lower-case hex")
            if not _all_match(e[1], 1, _TIME_FORM):
                raise InvalidEvent(e[0], "occurred_at",
                                   "an SDK use's time is canonical RFC 3339 UTC")  # fmt: skip
    bodies = {text: _entry_body(text) for text in {e[2] for e in entries}}
    seconds = {second: _real_second(second) for second in {e[1][:19] for e in entries}}
    if None in bodies.values() or False in seconds.values():
        for event_id, occurred_at, text in entries:  # the first that fails, for the error
            if bodies[text] is None:
                raise InvalidEvent(event_id, "body", "not the canonical text of a usage body "
                                   "with plain strings")  # fmt: skip
            if not seconds[occurred_at[:19]]:
                raise InvalidEvent(event_id, "occurred_at",
                                   "not a real time in the years 1970 to 2199")  # fmt: skip
    return cast("dict[str, UsageRecordedBody]", bodies)


def _real_second(second: str) -> bool:
    """Whether `YYYY-MM-DDTHH:MM:SS` (digits in place, checked) is a time `values.timestamp`
    accepts."""
    try:
        values.timestamp(second + ".000000Z", "occurred_at")
    except ValueError:
        return False
    return True


_Form: TypeAlias = tuple[str, dict[int, str], bytes]
"""A fixed-width form: a template (`x` where any of the free characters may stand), the
characters each other place allows, and the free characters."""

_ID_FORM: _Form = ("xxxxxxxx-xxxx-7xxx-8xxx-xxxxxxxxxxxx", {19: "89ab"}, b"0123456789abcdef")
_TIME_FORM: _Form = ("xxxx-xx-xxTxx:xx:xx.xxxxxxZ", {}, b"0123456789")


def _all_match(joined: str, count: int, form: _Form) -> bool:
    """Whether `joined` is `count` strings of `form` written one after another: slices at the
    form's width and counts, each a pass in C over the whole batch rather than a step per id."""
    template, choices, free = form
    width = len(template)
    if len(joined) != width * count or not joined.isascii():
        return False
    fixed = set(template) - {"x"}
    for place, char in enumerate(template):
        if place in choices:
            if joined[place::width].strip(choices[place]):
                return False
        elif char != "x" and joined[place::width] != char * count:
            return False
    # every fixed character is where the template puts it (above) and nowhere else (counted)
    if any(joined.count(c) != template.count(c) * count for c in fixed if c not in free.decode()):
        return False
    rest = joined.encode().translate(None, free + "".join(fixed).encode())
    return not rest


def _entry_body(text: object) -> UsageRecordedBody | None:
    """The body a `UsageEntry` holds, checked as the models check it, or None when the text is
    not the canonical form of a valid usage body with `plain` strings."""
    if type(text) is not str:
        return None
    try:
        body = UsageRecordedBody.model_validate_json(text)
    except ValidationError:
        return None
    if not plain(body.asset) or (body.grant is not None and not plain(body.grant)):
        return None
    if plain_usage_body(body.asset, body.units, body.revenue, body.grant) != text:
        return None
    return body


def entry_event(actor: str, entry: UsageEntry, body: UsageRecordedBody) -> UsageRecorded:
    """The model of a `UsageEntry` whose body `check_entries` gave."""
    return _usage_recorded(entry[0], actor, entry[1], body)


def encode_entries(actor: str, entries: Sequence[UsageEntry]) -> list[Encoded] | None:
    """`encode` of each `UsageEntry` (all of one batch's actor), written from text templates:
    one check that the actor is `plain` (None if not), each body encoded once. The entries are
    those `check_entries` passed: ids, times and bodies are canonical and `plain`."""
    if not plain(actor):
        return None
    bodies: dict[str, bytes] = {}
    out: list[Encoded] = []
    append = out.append
    tail = _USAGE_TAIL
    for event_id, occurred_at, text in entries:
        body = bodies.get(text)
        if body is None:
            body = bodies[text] = text.encode()
        append((body, (PLAIN_HEAD % (actor, text, event_id, occurred_at)).encode(), tail))
    return out


def encode(event: Event) -> Encoded:
    """The bytes of `signed_bytes`, split so the body and the leaf reuse them without a second
    encoding. Usage events, most of the log, are written straight from their fields."""
    if type(event) is UsageRecorded:
        b = event.body
        body = usage_body(b.asset, b.units, b.revenue, b.grant)
    else:
        body = canonical_bytes(body_dict(event), shape_known=shape_known(event))
    head, tail = event_parts(event.id, event.type, event.actor, event.occurred_at, body)
    return body, head, tail


def leaf_bytes(signed: dict[str, Any], recorded_at: str, *, shape_known: bool = False) -> bytes:
    """The Merkle leaf: RFC 8785 of the signed fields plus the ledger's `recorded_at`."""
    return canonical_bytes({**signed, "recorded_at": recorded_at}, shape_known=shape_known)


def shape_known(event: Event) -> bool:
    """Metadata is the only part of an event whose keys the models do not fix."""
    body = event.body
    return not isinstance(body, AssetRegisteredBody | AssetDerivedBody) or body.metadata is None


def batch_digest(hashes: list[bytes]) -> bytes:
    """SHA-256 over the concatenated event hashes, in order (DESIGN.md, "Batches are signed")."""
    return hashlib.sha256(b"".join(hashes)).digest()
