"""What a Kubernetes API server refuses, checked before anything is sent: names, labels, quantities.

kubernetes-validate (offline JSON schemas) accepts any string in these places; the server
answers 400/422 long after the run started. One place serves the training settings and the
model server's InferenceService.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tasks.errors import BadInput

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# resource.Quantity: a signed decimal with a binary (Ki..Ei), decimal (m, k..E) or exponent
# suffix. "8GB" and "2 cores" are what people write, and what the server refuses.
_QUANTITY = re.compile(
    r"^\+?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})


def dns_label(field: str, value: str) -> None:
    """Namespaces and most object names: lower-case alphanumerics and '-', <= 63 chars."""
    if not isinstance(value, str) or not DNS_LABEL.match(value) or len(value) > 63:
        raise BadInput(f"{field}: {value!r} must be a DNS-1123 label (lower-case letters, "
                       "digits and '-', starting and ending alphanumeric, <= 63 characters)")


def dns_subdomain(field: str, value: str) -> None:
    """Service accounts, claims, secrets: DNS-1123 labels joined by '.', <= 253 chars."""
    if not isinstance(value, str) or not DNS_SUBDOMAIN.match(value) or len(value) > 253:
        raise BadInput(f"{field}: {value!r} must be a DNS-1123 subdomain (lower-case letters, "
                       "digits, '-' and '.', <= 253 characters)")


def label_value(field: str, value: str) -> None:
    if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
        raise BadInput(f"{field}: {value!r} is not a valid label value (ASCII letters, digits, "
                       "'-', '_', '.', starting and ending alphanumeric, <= 63 characters)")


def qualified_name(field: str, value: str) -> None:
    """Label keys and extended resource names: an optional DNS prefix, '/', a short name."""
    if not isinstance(value, str) or not value:
        raise BadInput(f"{field}: {value!r} must be a non-empty label key")
    prefix, slash, name = value.rpartition("/")
    if slash:
        dns_subdomain(field, prefix)
    if not _QUALIFIED_NAME.match(name) or len(name) > 63:
        raise BadInput(f"{field}: {value!r} is not a valid key ([prefix/]name, the name "
                       "alphanumeric with '-', '_', '.', <= 63 characters)")


def extended_resource(field: str, value: str) -> None:
    """A device resource (nvidia.com/gpu): a domain-prefixed name outside kubernetes.io."""
    qualified_name(field, value)
    prefix = value.rpartition("/")[0]
    if not prefix or prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io") \
            or value.startswith("requests."):
        raise BadInput(f"{field}: {value!r} must be an extended resource name with a domain "
                       "of its own (e.g. nvidia.com/gpu)")


def quantity(field: str, value: str, *, positive: bool = True) -> None:
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise BadInput(f"{field}: {value!r} is not a Kubernetes quantity (e.g. '2', '500m', "
                       "'8Gi', '512M')")
    if positive and not re.search(r"[1-9]", value.split("e")[0].split("E")[0]):
        raise BadInput(f"{field}: {value!r} must be more than zero")


def one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInput(f"{field}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def image(field: str, value: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) \
            or value != value.strip() or not value.isascii():
        raise BadInput(f"{field}: {value!r} must be an image reference without spaces")


def node_selector(field: str, selector: Mapping[str, str]) -> None:
    for key, value in selector.items():
        qualified_name(f"{field}.{key}", key)
        label_value(f"{field}.{key}", value)


def toleration(field: str, tol: Mapping[str, object]) -> None:
    """The server's rules for a toleration (pkg/apis/core/validation, 1.20 to today)."""
    if unknown := sorted(set(tol) - _TOLERATION_KEYS):
        raise BadInput(f"{field}.{unknown[0]}: unknown toleration field")
    operator = tol.get("operator") or "Equal"  # empty means Equal to the server
    one_of(f"{field}.operator", operator, TOLERATION_OPERATORS)
    one_of(f"{field}.effect", tol.get("effect") or "", TOLERATION_EFFECTS)
    key, value = tol.get("key", ""), tol.get("value", "")
    if key:
        qualified_name(f"{field}.key", key)
    elif operator != "Exists":
        raise BadInput(f"{field}.operator: an empty key needs operator 'Exists'")
    if operator == "Exists" and value:
        raise BadInput(f"{field}.value: must be empty when operator is 'Exists'")
    label_value(f"{field}.value", value)
    if tol.get("tolerationSeconds") is not None:  # null means unset to the server
        seconds = tol["tolerationSeconds"]
        if tol.get("effect") != "NoExecute":
            raise BadInput(f"{field}.tolerationSeconds: only with effect 'NoExecute'")
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise BadInput(f"{field}.tolerationSeconds: {seconds!r} must be an integer")
