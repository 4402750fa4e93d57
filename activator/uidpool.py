"""The UID pool: which UID of the range an invocation gets, as pure bookkeeping.

Rule 1: a UID is handed out (:meth:`Pool.take`) only when it is FREE: probed free by the caller
and neither taken, leased, cooling nor known busy here. Handing it out makes it TAKEN, so it is
never handed out twice; the caller then takes the locks and either leases it
(:meth:`Pool.lease`), skips it (:meth:`Pool.skip`: a lock or a last-moment probe said no) or gives
it back (:meth:`Pool.give_back`: the invocation went away first). Only the owner of a live lease
releases it (:meth:`Pool.release`), and only after teardown has reported that no process of the
invocation is left: the pool cannot see processes, so this rule is the caller's half of the
contract ("a UID is never released while any process of it lives").

Rule 2: every UID of the range is in exactly one :class:`State` at every moment, and every
transition moves it to another; none is ever lost. :meth:`Pool.counts` always sums to
:attr:`Pool.size`.

Rule 3: this module is pure. It does no I/O, reads no clock and draws no random number: the time is
the ``now`` argument, the probes (locks, NSS, IPC, ``/proc``) run in ``uidstore`` in a worker thread
and their results come back through :meth:`Pool.checked`. Time never goes backwards here: a ``now``
older than one seen before counts as the newest seen, which keeps every due time in FIFO order.

Rule 4: every call on the allocation path (take, lease, skip, give_back, release, tick) costs O(1)
amortized at any occupancy, including "nothing is free" at 100 %. No call scans the range: FIFO
queues with lazy deletion hold the FREE, COOLING, BUSY and re-UNCHECKED UIDs, and a dict holds
each UID's state. :attr:`Pool.steps` counts the queue entries examined, so tests can prove it.

Rule 5: names come from :func:`user_name`, UIDs hashed from names from :func:`hash_uid`; both are
stable across restarts and machines (sha256, never Python's salted ``hash``). Live leases have
distinct user names: :meth:`Pool.lease` refuses a second live lease of the same name.

Theory of operation. A UID's life, one transition a line::

    UNCHECKED --checked(free)--> FREE --take--> TAKEN --lease--> LEASED --release--> COOLING
    COOLING --tick, once reuse_delay is over--> FREE   (release goes to FREE at once if it is 0)
    TAKEN --give_back--> FREE          TAKEN --skip(reason)--> BUSY
    UNCHECKED, FREE, BUSY --checked(reason)--> BUSY    BUSY --checked(free)--> FREE
    replay: a lock held elsewhere --> BUSY(LOCK); a stale lease reclaimed --> UNCHECKED

A released UID goes back to FREE without a new probe. Teardown has proven that no process of the
invocation is left, its IPC namespace took its IPC objects with it, its files are behind the
boundary directories, and our lock on it was held all along, so no other activator can have
taken it. The UID goes to the *back* of the FREE queue, so it is reused last: the longest possible
time passes before the same number serves another invocation. ``uidstore`` may still re-validate
FREE UIDs in the background (:meth:`Pool.checked` accepts them) and probes each UID once more at
the last moment after :meth:`Pool.take`.

A BUSY UID (a static user, an IPC object, a process, someone else's lock) is probed again when its
``recheck_after`` has passed: :meth:`Pool.to_check` lists the UNCHECKED UIDs first and then the
BUSY ones that are due; the caller probes them and reports with :meth:`Pool.checked`.
:meth:`Pool.next_due` says when the next COOLING or BUSY UID matures, so the async layer can sleep
until then.

After a crash, a new Pool starts with every UID UNCHECKED, and :meth:`Pool.replay` applies what
the lock registry says: a lease whose lock another live process holds is BUSY(LOCK), a stale lease
we reclaimed (its leftover processes killed) is UNCHECKED, probed like any other before reuse.

Order of preference (:meth:`Pool.take`): the caller passes the UIDs it prefers, in order (the owner
of the service's state directory, then :func:`hash_uid` of the user name); the first that is FREE
wins, else the oldest FREE UID. A preferred UID that is not yet probed is not FREE: the caller
probes it first (:meth:`Pool.checked` takes any UID of the range) if it wants it honoured.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from activator.units import parse_unit_name

#: The lowest UID a lease may have: never root.
UID_MIN = 1
#: The highest UID a lease may have: UIDs >= 2**31 break tools that treat uid_t as signed.
UID_MAX = 2**31 - 2

#: The version of the lock file record (:meth:`Lease.to_record`); bump on any change of its keys.
RECORD_VERSION = 1

#: POSIX's portable user names, at most 31 characters (utmp's limit, as systemd's strict
#: valid_user_group_name()).
USER_NAME_MAX = 31
_USER_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_-]{0,30}")
#: The characters a user name may hold; everything else becomes "_" in a hashed name.
_NAME_CHAR = re.compile(r"[a-zA-Z0-9_-]")
#: A per-invocation suffix of :func:`user_name`.
_SUFFIX = re.compile(r"[a-zA-Z0-9_-]+")
#: How many hex digits of sha256 end a hashed user name.
_NAME_HASH_DIGITS = 8
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")

#: The keys of a lease record, all required.
_RECORD_KEYS = frozenset(
    {"version", "uid", "gid", "user", "unit", "invocation", "source", "started", "cgroup"}
)

#: A queue holds no more stale entries than this plus its live ones before it is compacted.
_SLACK = 64


class Source(enum.Enum):
    """How a UID was chosen (the ``source`` label of the allocation metrics)."""

    #: It owns the service's existing state directory: no chown needed.
    STATE_DIRECTORY = "state_directory"
    #: :func:`hash_uid` of the user name: the same name gets the same UID again when it is free.
    NAME_HASH = "name_hash"
    #: The oldest UID of the pre-checked free set.
    FREE_SET = "free_set"


class SkipReason(enum.Enum):
    """Why a candidate UID was not usable (the ``reason`` label of the skip metrics)."""

    #: A lock holds it: ours in another activator, or systemd's ``/run/systemd/dynamic-uid/``.
    LOCK = "lock"
    #: NSS knows a user or a group with that number.
    NSS = "nss"
    #: A SysV IPC object, POSIX shm or mqueue is owned by it.
    IPC = "ipc"
    #: A process runs with it as real, effective, saved or filesystem UID.
    PROCESS = "process"


class State(enum.Enum):
    """Where a UID of the pool is in its life (the ``state`` label of
    ``activator_uid_pool_uids``)."""

    #: Never probed, or reclaimed after a crash: probed before it may be used.
    UNCHECKED = "unchecked"
    #: Probed free: in the pre-checked free set, waiting its turn.
    FREE = "free"
    #: Handed out by :meth:`Pool.take`; the caller is taking its locks.
    TAKEN = "taken"
    #: Held by a live invocation.
    LEASED = "leased"
    #: Released, waiting out the reuse delay.
    COOLING = "cooling"
    #: In use by someone else (see :class:`SkipReason`); probed again when due.
    BUSY = "busy"


def _check_uid(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not UID_MIN <= value <= UID_MAX:
        msg = f"{attribute.name} must be an integer {UID_MIN}..{UID_MAX} (got {value!r})"
        raise ValueError(msg)


def _check_user(_instance: object, _attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not is_valid_user_name(value):
        msg = f"user must be a valid user name (got {value!r})"
        raise ValueError(msg)


def _check_text(_instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value or "\0" in value:
        msg = f"{attribute.name} must be non-empty text without NUL (got {value!r})"
        raise ValueError(msg)


def _check_source(_instance: object, _attribute: attrs.Attribute[Source], value: object) -> None:
    if not isinstance(value, Source):
        msg = f"source must be a Source (got {value!r})"
        raise ValueError(msg)


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, if it is an int or float (not a bool) that fits one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond 1.8e308
        return None
    return number if math.isfinite(number) else None


def _check_started(_instance: object, _attribute: attrs.Attribute[float], value: object) -> None:
    if _finite_float(value) is None:
        msg = f"started must be a finite number (got {value!r})"
        raise ValueError(msg)


def _check_cgroup(_instance: object, _attr: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        msg = f"cgroup must be None or non-empty text without NUL (got {value!r})"
        raise ValueError(msg)


@attrs.frozen
class Lease:
    """One live lease: a UID (and the GID of the same number) held by one invocation.

    Attributes:
        uid: the UID; the GID is the same number.
        user: the user name (and group name) published through userdb while the lease lives.
        unit: the service unit's name, instance included (``foobar@customerxyz.service``).
        invocation: the invocation's id, unique on this host (connection id or start id).
        source: how the UID was chosen.
        started: when the lease began, in the caller's clock (seconds; wall time in lock files).
        cgroup: the invocation's cgroup, so that a restarted activator can kill its leftovers;
            None until it is made.
    """

    uid: int = attrs.field(validator=_check_uid)
    user: str = attrs.field(validator=_check_user)
    unit: str = attrs.field(validator=_check_text)
    invocation: str = attrs.field(validator=_check_text)
    source: Source = attrs.field(validator=_check_source)
    started: float = attrs.field(validator=_check_started)
    cgroup: str | None = attrs.field(default=None, validator=_check_cgroup)

    @property
    def gid(self) -> int:
        """The GID, always the UID's number."""
        return self.uid

    def to_record(self) -> dict[str, object]:
        """The JSON-able record written into the lease's lock file; :meth:`from_record` reads it."""
        return {
            "version": RECORD_VERSION,
            "uid": self.uid,
            "gid": self.gid,
            "user": self.user,
            "unit": self.unit,
            "invocation": self.invocation,
            "source": self.source.value,
            "started": float(self.started),
            "cgroup": self.cgroup,
        }

    @classmethod
    def from_record(cls, record: object) -> Lease:
        """Read a record written by :meth:`to_record`, as parsed from JSON.

        Raises:
            ValueError: naming the key at fault, when the record is not exactly a version 1 lease
                record: a key missing or unknown, a value of the wrong type or out of range.
        """
        if not isinstance(record, Mapping):
            msg = f"lease record must be a JSON object (got {type(record).__name__})"
            raise ValueError(msg)
        version = record.get("version")
        if type(version) is not int or version != RECORD_VERSION:
            msg = f"lease record version must be {RECORD_VERSION} (got {version!r})"
            raise ValueError(msg)
        missing = sorted(_RECORD_KEYS - record.keys())
        if missing:
            msg = f"lease record lacks {', '.join(map(repr, missing))}"
            raise ValueError(msg)
        unknown = sorted(str(k) for k in record.keys() - _RECORD_KEYS)
        if unknown:
            msg = f"lease record has unknown key {', '.join(map(repr, unknown))}"
            raise ValueError(msg)
        uid, gid = record["uid"], record["gid"]
        if type(gid) is not int or gid != uid:
            msg = f"lease record gid must equal uid {uid!r} (got {gid!r})"
            raise ValueError(msg)
        source = record["source"]
        try:
            parsed_source = Source(source)
        except ValueError:
            choices = ", ".join(repr(s.value) for s in Source)
            msg = f"lease record source must be one of {choices} (got {source!r})"
            raise ValueError(msg) from None
        started = _finite_float(record["started"])
        if started is None:
            msg = f"lease record started must be a finite number (got {record['started']!r})"
            raise ValueError(msg)
        try:
            # The validators check the types and values of the other fields.
            return cls(
                uid=record["uid"],
                user=record["user"],
                unit=record["unit"],
                invocation=record["invocation"],
                source=parsed_source,
                started=started,
                cgroup=record["cgroup"],
            )
        except ValueError as e:
            msg = f"lease record {e}"
            raise ValueError(msg) from None


# ---------------------------------------------------------------------------------------------
# Names and hashes


def is_valid_user_name(name: str) -> bool:
    """Whether ``name`` is a POSIX portable user name: ``[a-zA-Z_][a-zA-Z0-9_-]*``, 1..31 chars.

    This is systemd's strict ``valid_user_group_name()``: no dots, no ``@``, no leading digit or
    dash, at most 31 characters (utmp's limit), so every tool shows it whole.
    """
    return _USER_NAME.fullmatch(name) is not None


def user_name(unit: str, *, suffix: str | None = None) -> str:
    """The dynamic user name of an invocation of ``unit``.

    The rule:

    1. The readable name joins the unit's prefix, its instance if any and ``suffix`` if given with
       ``-``: ``dynamic-user-test.service`` runs as ``dynamic-user-test`` (systemd's name, for a
       plain or Accept=no service); ``foobar@customerxyz.service`` as ``foobar-customerxyz`` (each
       instance its own user, where systemd gives all instances the prefix's); a per-connection
       invocation with suffix ``3f2a`` of ``waldo.service`` as ``waldo-3f2a``, of
       ``foobar@customerxyz.service`` as ``foobar-customerxyz-3f2a``. When that is a valid user
       name (:func:`is_valid_user_name`) it is the answer.
    2. Otherwise (too long, or a character a user name cannot hold: ``.``, ``:``, ``@`` or a
       systemd escape like ``\\x2d``) the name is hashed: the readable name with its ``\\xNN``
       escapes decoded (``a\\x2db`` reads ``a-b``), every character outside ``[a-zA-Z0-9_-]``
       made ``_``, a ``_`` put first if it would start with a digit or ``-``, cut to 22
       characters and stripped of trailing ``-``; then ``-`` and the first 8 hex digits of the
       sha256 of the unit name without its type (``foo@1.2.3.4``; ``foo@1.2.3.4/3f2a`` with a
       suffix). ``foo@1.2.3.4.service`` runs as ``foo-1_2_3_4-`` plus those 8 hex digits.

    A name with an escape is always hashed, even when the decoded text would be valid, because
    the escaped and the plain spelling are different units (``a\\x2db`` is "a-b", ``a-b`` is
    "a/b" to systemd): they must not share a user. So the instances of one template get distinct
    names, and so do the suffixes of one unit (but for a 32-bit collision of sha256 prefixes
    between a hashed name and a readable one of the same shape). Distinct units can still meet
    (``foo-bar@baz`` and ``foo@bar-baz`` both give ``foo-bar-baz``), as they can in systemd;
    :meth:`Pool.lease` refuses a second live lease of a name, and the caller picks another
    suffix. The result is always a valid user name, and the same on every run and machine. The
    unit's type does not matter: ``echo.socket`` and ``echo.service`` both give ``echo``.

    Args:
        unit: a valid ``.service`` or ``.socket`` unit name, not a template.
        suffix: a short id of a per-connection invocation, ``[a-zA-Z0-9_-]+``.

    Raises:
        ValueError: when ``unit`` is not a valid unit name or is a template, or ``suffix`` is
            empty or holds a character a user name cannot.
    """
    name = parse_unit_name(unit)
    if name.is_template:
        msg = f"unit {unit!r} is a template: only its instances run, and have users"
        raise ValueError(msg)
    if suffix is not None and _SUFFIX.fullmatch(suffix) is None:
        msg = f"user name suffix must be 1 or more of [a-zA-Z0-9_-] (got {suffix!r})"
        raise ValueError(msg)
    parts = [name.prefix, name.instance, suffix]
    readable = "-".join(part for part in parts if part is not None)
    if is_valid_user_name(readable):
        return readable
    # "/" appears in no unit name: stem and suffix are told apart.
    hashed = name.stem if suffix is None else f"{name.stem}/{suffix}"
    digest = hashlib.sha256(hashed.encode()).hexdigest()[:_NAME_HASH_DIGITS]
    stem = "".join(c if _NAME_CHAR.fullmatch(c) else "_" for c in _decode_escapes(readable))
    if not re.match(r"[a-zA-Z_]", stem):
        stem = "_" + stem
    stem = stem[: USER_NAME_MAX - 1 - _NAME_HASH_DIGITS].rstrip("-")
    return f"{stem}-{digest}"


def _decode_escapes(text: str) -> str:
    """``\\xNN`` escapes decoded as bytes of UTF-8; undecodable bytes become U+FFFD (then ``_``)."""
    data = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1", "replace")
    return data.decode("utf-8", "replace")


def hash_uid(name: str, first: int, last: int) -> int:
    """The UID of the pool ``[first, last]`` that the user ``name`` prefers.

    ``first + int.from_bytes(sha256(name as UTF-8).digest()[:8], "big") % (last - first + 1)``:
    the same name gets the same UID on every run and every machine (Python's ``hash`` is salted
    per process, so it is not used), and names spread evenly over the pool (the modulo bias of a
    64-bit number over at most 2**31 UIDs is below 2**-32).

    Raises:
        ValueError: when ``first > last``.
    """
    if first > last:
        msg = f"UID range must have first <= last (got {first}..{last})"
        raise ValueError(msg)
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return first + int.from_bytes(digest[:8], "big") % (last - first + 1)


# ---------------------------------------------------------------------------------------------
# The pool


class _Queue:
    """A FIFO of ``(uid, ticket)`` with lazy deletion: a list and the index of its head.

    ``collections.deque`` is not on the pure modules' import allow-list; a list with a moving head,
    trimmed when the head passes half of it, is O(1) amortized just the same. An entry is live
    while the pool's ticket of its UID is the entry's ticket; ``stale`` counts the others.
    """

    __slots__ = ("head", "items", "stale")

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        self.head = 0
        self.stale = 0

    def __len__(self) -> int:
        """Entries left, stale ones included."""
        return len(self.items) - self.head


class Pool:
    """Mutable bookkeeping of every UID of the range ``[first, last]``; pure.

    Only UIDs that left UNCHECKED at least once are stored: a pool of two billion UIDs costs
    nothing until they are probed. See the module docstring for the states and their rules.

    Args:
        first: the lowest UID of the pool.
        last: the highest UID of the pool.
        reuse_delay: seconds a released UID waits (COOLING) before it is FREE again; 0 makes it
            FREE at once.
        recheck_after: seconds before a BUSY UID is due to be probed again.

    Raises:
        ValueError: when the range is empty or leaves ``UID_MIN..UID_MAX``, or a delay is negative
            or not finite.
    """

    def __init__(
        self, first: int, last: int, *, reuse_delay: float = 0.0, recheck_after: float = 10.0
    ) -> None:
        if not UID_MIN <= first <= last <= UID_MAX:
            msg = f"UID range must be first <= last in {UID_MIN}..{UID_MAX} (got {first}..{last})"
            raise ValueError(msg)
        for what, delay in (("reuse_delay", reuse_delay), ("recheck_after", recheck_after)):
            if not (math.isfinite(delay) and delay >= 0):
                msg = f"{what} must be a finite number of seconds >= 0 (got {delay!r})"
                raise ValueError(msg)
        self._first = first
        self._last = last
        self._reuse_delay = float(reuse_delay)
        self._recheck_after = float(recheck_after)
        #: The newest time seen (Rule 3).
        self._now = -math.inf
        #: Every UID that ever left the implicit UNCHECKED state; the others are UNCHECKED.
        self._states: dict[int, State] = {}
        #: How many UIDs of ``_states`` are in each state.
        self._counts = dict.fromkeys(State, 0)
        #: Every UID below this is in ``_states``: where to look for never-probed UIDs.
        self._fresh = first
        #: The ticket of each UID that is in a queue (Rule 4); a UID is in at most one queue.
        self._tickets: dict[int, int] = {}
        self._ticket = 0
        self._queues: dict[State, _Queue] = {
            State.UNCHECKED: _Queue(),  # reclaimed by replay: probed before the never-probed
            State.FREE: _Queue(),
            State.COOLING: _Queue(),
            State.BUSY: _Queue(),
        }
        self._due: dict[int, float] = {}  # COOLING and BUSY UIDs
        self._reasons: dict[int, SkipReason] = {}  # BUSY UIDs
        self._busy_counts = dict.fromkeys(SkipReason, 0)
        self._leases: dict[int, Lease] = {}
        self._users: dict[str, int] = {}
        #: Queue entries examined or moved, in total: the work counter for the O(1) tests.
        self.steps = 0

    # --- views ----------------------------------------------------------------------------

    @property
    def first(self) -> int:
        """The lowest UID of the pool."""
        return self._first

    @property
    def last(self) -> int:
        """The highest UID of the pool."""
        return self._last

    @property
    def size(self) -> int:
        """How many UIDs the pool holds."""
        return self._last - self._first + 1

    @property
    def leased(self) -> Mapping[int, Lease]:
        """The live leases by UID (a live view: do not keep it across calls that change it)."""
        return self._leases

    @property
    def free_count(self) -> int:
        """How many UIDs are FREE: :meth:`take` succeeds exactly when this is not 0."""
        return self._counts[State.FREE]

    def lease_by_user(self, name: str) -> Lease | None:
        """The live lease of the user ``name``, if any."""
        uid = self._users.get(name)
        return None if uid is None else self._leases[uid]

    def lease_by_uid(self, uid: int) -> Lease | None:
        """The live lease of ``uid``, if any."""
        return self._leases.get(uid)

    def state(self, uid: int) -> State:
        """The state of ``uid``.

        Raises:
            ValueError: when ``uid`` is not in the pool's range.
        """
        self._check_range(uid)
        return self._states.get(uid, State.UNCHECKED)

    def counts(self) -> dict[str, int]:
        """How many UIDs are in each state, by :class:`State` value; they sum to :attr:`size`."""
        counts = {state.value: n for state, n in self._counts.items()}
        counts[State.UNCHECKED.value] += self.size - len(self._states)
        return counts

    def busy_counts(self) -> dict[str, int]:
        """How many UIDs are BUSY for each :class:`SkipReason`, by its value."""
        return {reason.value: n for reason, n in self._busy_counts.items()}

    def free_uids(self) -> list[int]:
        """The FREE UIDs in the order :meth:`take` hands them out (O(n): for status and tests)."""
        return list(self._live(State.FREE))

    def next_due(self, now: float) -> float | None:
        """When the next COOLING or BUSY UID matures (it may be ``<= now``: due already).

        The async layer sleeps until then before it calls :meth:`tick` or :meth:`to_check`;
        None when no UID is COOLING or BUSY.
        """
        self._clock(now)
        heads = (self._peek(State.COOLING), self._peek(State.BUSY))
        return min((self._due[uid] for uid in heads if uid is not None), default=None)

    # --- probing --------------------------------------------------------------------------

    def to_check(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` UIDs to probe: UNCHECKED ones first, then BUSY ones that are due.

        The UNCHECKED come in this order: UIDs reclaimed by :meth:`replay`, then never-probed UIDs
        from the bottom of the range up. Changes no state: the caller probes the UIDs and
        reports with :meth:`checked`; until then, a second call lists the same UIDs.
        """
        now = self._clock(now)
        out: list[int] = []
        if limit <= 0:
            return out
        out.extend(self._live(State.UNCHECKED, limit=limit))
        # Never-probed UIDs: every UID below _fresh is known, so the scan starts there and only
        # passes UIDs already known (probed out of order); those stop it moving on only once.
        while self._fresh <= self._last and self._fresh in self._states:
            self._fresh += 1
            self.steps += 1
        uid = self._fresh
        while uid <= self._last and len(out) < limit:
            if uid not in self._states:
                out.append(uid)
            uid += 1
            self.steps += 1
        if len(out) < limit:
            for uid in self._live(State.BUSY, limit=limit - len(out)):
                if self._due[uid] > now:  # dues are in queue order (Rule 3): none later is due
                    break
                out.append(uid)
        return out

    def checked(self, results: Mapping[int, SkipReason | None], now: float) -> None:
        """Record probe results: None makes a UID FREE (at the back of the free set), a reason
        BUSY (due for a new probe after ``recheck_after``).

        Only UNCHECKED, BUSY and FREE UIDs take a result: a UID taken or leased while it was
        being probed keeps its state. A FREE UID found free keeps its place in the free set; one
        found busy (background re-validation) leaves it.

        Raises:
            ValueError: when a UID is not in the pool's range.
        """
        now = self._clock(now)
        for uid in results:
            self._check_range(uid)
        for uid, reason in results.items():
            state = self._states.get(uid, State.UNCHECKED)
            if state not in (State.UNCHECKED, State.BUSY, State.FREE):
                continue
            if reason is not None:
                self._move(uid, State.BUSY, due=now + self._recheck_after, reason=reason)
            elif state is not State.FREE:
                self._move(uid, State.FREE)

    # --- allocation -----------------------------------------------------------------------

    def take(self, preferred: Sequence[tuple[int, Source]] = ()) -> tuple[int, Source] | None:
        """Hand out a FREE UID, now TAKEN: the first FREE of ``preferred``, else the oldest FREE.

        Args:
            preferred: UIDs the caller would rather have, best first, each with the
                :class:`Source` to report when it wins; UIDs outside the range or not FREE are
                passed over.

        Returns:
            The UID and how it was chosen (:attr:`Source.FREE_SET` for the oldest FREE), or None
            when no UID is FREE.
        """
        for uid, source in preferred:
            if self._states.get(uid) is State.FREE:
                self._move(uid, State.TAKEN)
                return uid, source
        oldest = self._pop(State.FREE)
        if oldest is None:
            return None
        self._move(oldest, State.TAKEN)
        return oldest, Source.FREE_SET

    def lease(self, lease: Lease) -> None:
        """Record a lease of a TAKEN UID whose locks the caller now holds: TAKEN -> LEASED.

        Raises:
            ValueError: when the UID is not TAKEN (or not in the range), or another live lease
                has the same user name (the caller picks another suffix).
        """
        state = self.state(lease.uid)
        if state is not State.TAKEN:
            msg = f"lease of UID {lease.uid}: must be taken first (it is {state.value})"
            raise ValueError(msg)
        other = self._users.get(lease.user)
        if other is not None:
            msg = f"lease of UID {lease.uid}: user name {lease.user!r} is leased to UID {other}"
            raise ValueError(msg)
        self._move(lease.uid, State.LEASED)
        self._leases[lease.uid] = lease
        self._users[lease.user] = lease.uid

    def skip(self, uid: int, reason: SkipReason, now: float) -> None:
        """A TAKEN UID turned out to be in use (a lock held elsewhere, a last-moment probe):
        TAKEN -> BUSY, due for a new probe after ``recheck_after``.

        Raises:
            ValueError: when ``uid`` is not TAKEN.
        """
        now = self._clock(now)
        self._expect(uid, State.TAKEN, "skip")
        self._move(uid, State.BUSY, due=now + self._recheck_after, reason=reason)

    def give_back(self, uid: int) -> None:
        """Return a TAKEN UID that was never leased (its invocation went away before it):
        TAKEN -> FREE, at the back of the free set. The caller has dropped its locks.

        Raises:
            ValueError: when ``uid`` is not TAKEN.
        """
        self._expect(uid, State.TAKEN, "give back")
        self._move(uid, State.FREE)

    def release(self, uid: int, now: float) -> Lease:
        """End the lease of ``uid``, once teardown reported that no process of it is left:
        LEASED -> COOLING until ``now + reuse_delay``, or FREE at once when that delay is 0.

        Returns:
            The lease that ended.

        Raises:
            ValueError: when ``uid`` is not LEASED.
        """
        now = self._clock(now)
        self._expect(uid, State.LEASED, "release")
        lease = self._leases.pop(uid)
        del self._users[lease.user]
        if self._reuse_delay > 0:
            self._move(uid, State.COOLING, due=now + self._reuse_delay)
        else:
            self._move(uid, State.FREE)
        return lease

    def tick(self, now: float) -> None:
        """Make the COOLING UIDs whose reuse delay is over FREE, oldest first."""
        now = self._clock(now)
        while (uid := self._peek(State.COOLING)) is not None and self._due[uid] <= now:
            self._pop(State.COOLING)
            self._move(uid, State.FREE)

    def replay(self, leased_elsewhere: Iterable[int], reclaimed: Iterable[int], now: float) -> None:
        """Apply the lock registry after a (re)start, before any UID is handed out.

        Args:
            leased_elsewhere: UIDs whose lease lock another live process holds: BUSY(LOCK), probed
                again after ``recheck_after``.
            reclaimed: UIDs whose stale lease we took over (and killed its leftovers):
                UNCHECKED, probed before anything else and before reuse.
            now: the time.

        UIDs outside the range are ignored: the registry may hold leases of an older pool range.

        Raises:
            ValueError: when one of the UIDs is TAKEN or LEASED here (ours, so it cannot be
                either), or in both arguments.
        """
        now = self._clock(now)
        elsewhere = {uid for uid in leased_elsewhere if self._first <= uid <= self._last}
        stale = [uid for uid in reclaimed if self._first <= uid <= self._last]
        both = elsewhere.intersection(stale)
        if both:
            msg = f"replay: UID {min(both)} cannot be both leased elsewhere and reclaimed"
            raise ValueError(msg)
        for uid in [*sorted(elsewhere), *stale]:
            state = self._states.get(uid, State.UNCHECKED)
            if state in (State.TAKEN, State.LEASED):
                msg = f"replay: UID {uid} is {state.value} by this process"
                raise ValueError(msg)
        for uid in sorted(elsewhere):
            self._move(uid, State.BUSY, due=now + self._recheck_after, reason=SkipReason.LOCK)
        for uid in stale:
            if self._states.get(uid) is not State.UNCHECKED:  # implicit, or not UNCHECKED at all
                self._move(uid, State.UNCHECKED)

    # --- internals ------------------------------------------------------------------------

    def _clock(self, now: float) -> float:
        """Rule 3: time never goes backwards."""
        if now > self._now:
            self._now = now
        return self._now

    def _check_range(self, uid: int) -> None:
        if not self._first <= uid <= self._last:
            msg = f"UID {uid} is not in the pool {self._first}..{self._last}"
            raise ValueError(msg)

    def _expect(self, uid: int, expected: State, what: str) -> None:
        state = self.state(uid)
        if state is not expected:
            msg = f"{what} UID {uid}: must be {expected.value} (it is {state.value})"
            raise ValueError(msg)

    def _move(
        self, uid: int, new: State, *, due: float | None = None, reason: SkipReason | None = None
    ) -> None:
        """Move ``uid`` to ``new``, leaving its old state's queue and joining the new one's."""
        old = self._states.get(uid)
        if old is not None:
            self._counts[old] -= 1
            if self._tickets.pop(uid, None) is not None:  # still queued: a stale entry now
                self._forget(old)
            if old is State.BUSY:
                self._busy_counts[self._reasons.pop(uid)] -= 1
            self._due.pop(uid, None)
        self._states[uid] = new
        self._counts[new] += 1
        queue = self._queues.get(new)
        if queue is not None:
            self._ticket += 1
            self._tickets[uid] = self._ticket
            queue.items.append((uid, self._ticket))
        if due is not None:
            self._due[uid] = due
        if reason is not None:
            self._reasons[uid] = reason
            self._busy_counts[reason] += 1

    def _forget(self, state: State) -> None:
        """One entry of ``state``'s queue went stale; compact the queue when most of it is."""
        queue = self._queues[state]
        queue.stale += 1
        if queue.stale > _SLACK and 2 * queue.stale > len(queue):
            live = [(u, t) for u, t in queue.items[queue.head :] if self._tickets.get(u) == t]
            self.steps += len(queue)
            queue.items, queue.head, queue.stale = live, 0, 0

    def _live(self, state: State, *, limit: int | None = None) -> Iterator[int]:
        """The live UIDs of ``state``'s queue, oldest first, without taking them out.

        Stale entries at the front are dropped on the way; those further in are passed over (at
        most about as many as there are live ones, by :meth:`_forget`). Nothing may change the
        pool while the iterator runs.
        """
        queue = self._queues[state]
        self._drop_stale_head(queue)
        found = 0
        index = queue.head
        while index < len(queue.items) and (limit is None or found < limit):
            uid, ticket = queue.items[index]
            index += 1
            self.steps += 1
            if self._tickets.get(uid) == ticket:
                found += 1
                yield uid

    def _peek(self, state: State) -> int | None:
        """The oldest live UID of ``state``'s queue, left in it."""
        queue = self._queues[state]
        self._drop_stale_head(queue)
        return queue.items[queue.head][0] if queue.head < len(queue.items) else None

    def _pop(self, state: State) -> int | None:
        """Take the oldest live UID out of ``state``'s queue (its state is left to the caller)."""
        queue = self._queues[state]
        self._drop_stale_head(queue)
        if queue.head == len(queue.items):
            return None
        uid, _ticket = queue.items[queue.head]
        queue.head += 1
        self.steps += 1
        del self._tickets[uid]
        self._trim(queue)
        return uid

    def _drop_stale_head(self, queue: _Queue) -> None:
        items = queue.items
        while queue.head < len(items):
            uid, ticket = items[queue.head]
            if self._tickets.get(uid) == ticket:
                break
            queue.head += 1
            queue.stale -= 1
            self.steps += 1
        self._trim(queue)

    def _trim(self, queue: _Queue) -> None:
        """Drop the consumed front of the list once it is most of it: O(1) amortized."""
        if queue.head > _SLACK and 2 * queue.head >= len(queue.items):
            del queue.items[: queue.head]
            self.steps += len(queue.items)
            queue.head = 0
