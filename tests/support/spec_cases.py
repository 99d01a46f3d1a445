"""EtcdStorage objects at the edges of validity, for checking that `spec.parse` and the CRD agree on each.

One table and one generator of random objects, fed both to `spec.parse` (tests/unit/test_crd.py, test_spec.py) and
to a real kube-apiserver's admission (tests/e2e/test_crd.py). The one known difference is not in here: a destination
listed twice is refused at admission and merged by `spec.parse` (see `duplicate_destinations`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from etcdstorage import names, spec
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage

Body = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Case:
    """An object; `refused` is the field both sides must name, or None when both must accept it."""

    id: str
    body: Body
    refused: str | None


def accepted(case_id: str, name: str = "sample-apiserver", **fields: Any) -> Case:
    return Case(case_id, etcdstorage(name, **fields), None)


def refused(case_id: str, field: str, name: str = "sample-apiserver", **fields: Any) -> Case:
    return Case(case_id, etcdstorage(name, **fields), field)


def destinations(count: int) -> list[dict[str, str]]:
    return [{"name": f"ca-{index}", "namespace": "tenant"} for index in range(count)]


def validities(value: str) -> dict[str, str]:
    return dict.fromkeys(
        ("signingCertificateValidity", "servingCertificateValidity", "clientCertificateValidity"), value
    )


CASES: list[Case] = [
    accepted("the original project's example"),
    accepted("a name of exactly 58 characters", "a" * names.MAX_NAME_LENGTH),
    accepted("a name with dashes and digits", "a-b-0"),
    accepted("validities of exactly 10m", **validities("10m")),
    accepted("validities in nanoseconds", **validities("600000000000ns")),
    accepted("fractions of hours, with nothing after the point or before it", **validities("1.h"), renewBefore=".5h"),
    accepted(
        "leaves as long as the signing validity, in other units",
        signingCertificateValidity="1h30m",
        servingCertificateValidity="90m",
        clientCertificateValidity="5400s",
    ),
    accepted(
        "a renewBefore one nanosecond shorter than the validities",
        renewBefore="730h0.0000001s",
        **validities("730h0.000000101s"),
    ),
    accepted("null lists, as the original's Go client sends them", caCertConfigMap=None, clientCertSecret=None),
    accepted("a destination name with dots", caCertConfigMap=[{"name": "serving-ca.v2", "namespace": "ns"}]),
    accepted("32 destinations, the most a list holds", caCertConfigMap=destinations(spec.MAX_DESTINATIONS)),
    accepted("every new field at its limit", keyAlgorithm="RSA4096", replicas=spec.MAX_REPLICAS, renewBefore="1m"),
    refused("a name of 59 characters", "metadata.name", "a" * (names.MAX_NAME_LENGTH + 1)),
    refused("a name with a dot", "metadata.name", "sample.apiserver"),
    refused("a name ending in a dash", "metadata.name", "sample-"),
    refused("a name ending in a line break", "metadata.name", "sample\n"),
    refused("the core API server's prefix as a name", "metadata.name", "registry"),
    refused("a validity that is not a duration", "spec.signingCertificateValidity", signingCertificateValidity="abc"),
    refused("a validity without unit", "spec.servingCertificateValidity", servingCertificateValidity="730"),
    refused("a validity in days", "spec.servingCertificateValidity", servingCertificateValidity="30d"),
    refused("a negative validity", "spec.servingCertificateValidity", servingCertificateValidity="-1h"),
    refused("a validity with a plus sign", "spec.clientCertificateValidity", clientCertificateValidity="+730h"),
    refused("a validity of 0", "spec.clientCertificateValidity", clientCertificateValidity="0"),
    refused(
        "a validity in µs, which Go reads", "spec.clientCertificateValidity", clientCertificateValidity="600000000µs"
    ),
    refused(
        "a validity of 33 characters",
        "spec.signingCertificateValidity",
        signingCertificateValidity="0" * 29 + "730h",
    ),
    # Refused at admission by a CEL type conversion error, the one unreadable message left: no pattern bounds a sum.
    refused(
        "a validity beyond Go's 292 years", "spec.servingCertificateValidity", servingCertificateValidity="2562048h"
    ),
    refused("a validity shorter than 10m", "spec.clientCertificateValidity", clientCertificateValidity="9m59.9s"),
    refused("a number for a validity", "spec.signingCertificateValidity", signingCertificateValidity=730),
    refused(
        "a serving certificate outliving its CA", "spec.servingCertificateValidity", servingCertificateValidity="731h"
    ),
    refused(
        "a client certificate outliving its CA by a nanosecond",
        "spec.clientCertificateValidity",
        clientCertificateValidity="730h0.000000001s",
    ),
    refused("a renewBefore that is not a duration", "spec.renewBefore", renewBefore="soon"),
    refused("a renewBefore as long as a validity", "spec.renewBefore", renewBefore="730h"),
    refused("a renewBefore as long as a validity, with a fraction", "spec.renewBefore", renewBefore="730.0h"),
    refused("a renewBefore shorter than 1m", "spec.renewBefore", renewBefore="59s"),
    refused("a string for the list of ConfigMaps", "spec.caCertConfigMap", caCertConfigMap="etcd-serving-ca"),
    refused("33 destinations", "spec.caCertConfigMap", caCertConfigMap=destinations(spec.MAX_DESTINATIONS + 1)),
    refused(
        "a destination without a namespace", "spec.clientCertSecret[0].namespace", clientCertSecret=[{"name": "x"}]
    ),
    refused(
        "a destination name with an underscore",
        "spec.clientCertSecret[0].name",
        clientCertSecret=[{"name": "x_y", "namespace": "a"}],
    ),
    refused(
        "a destination namespace of 64 characters",
        "spec.caCertConfigMap[0].namespace",
        caCertConfigMap=[{"name": "x", "namespace": "a" * 64}],
    ),
    refused(
        "a destination namespace ending in a line break",
        "spec.caCertConfigMap[0].namespace",
        caCertConfigMap=[{"name": "x", "namespace": "ns\n"}],
    ),
    refused(
        "a destination name of 254 characters",
        "spec.caCertConfigMap[0].name",
        caCertConfigMap=[{"name": "a." * 126 + "ab", "namespace": "a"}],
    ),
    refused("an unknown key algorithm", "spec.keyAlgorithm", keyAlgorithm="DSA"),
    accepted(
        "a Deployment and a StatefulSet as consumers",
        consumers=[
            {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "tenant", "name": "api"},
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "namespace": "tenant", "name": "api"},
        ],
    ),
    refused(
        "a DaemonSet as consumer",
        "spec.consumers[0].kind",
        consumers=[{"apiVersion": "apps/v1", "kind": "DaemonSet", "namespace": "tenant", "name": "api"}],
    ),
    refused(
        "a consumer of another API version",
        "spec.consumers[0].apiVersion",
        consumers=[{"apiVersion": "apps/v1beta1", "kind": "Deployment", "namespace": "tenant", "name": "api"}],
    ),
    refused(
        "a consumer in a namespace with a dot",
        "spec.consumers[0].namespace",
        consumers=[{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "a.b", "name": "api"}],
    ),
    accepted("deletionPolicy Delete", deletionPolicy="Delete"),
    accepted("deletionPolicy Retain", deletionPolicy="Retain"),
    refused("a deletion policy in the wrong case", "spec.deletionPolicy", deletionPolicy="delete"),
    refused("a deletion policy that is not a string", "spec.deletionPolicy", deletionPolicy=1),
    refused("zero replicas", "spec.replicas", replicas=0),
    refused("more replicas than the most", "spec.replicas", replicas=spec.MAX_REPLICAS + 1),
    refused("replicas as a string", "spec.replicas", replicas="3"),
    refused("replicas as a boolean", "spec.replicas", replicas=True),
]


def duplicate_destinations() -> Body:
    """The same ConfigMap twice: refused at admission (a list keyed by namespace and name), merged by `spec.parse`,
    because objects stored under the original's CRD, which had no such key, may hold duplicates."""
    return etcdstorage(caCertConfigMap=[{"name": "ca", "namespace": "ns"}] * 2)


# --- Random objects -----------------------------------------------------------------------------------------------
# Values near every edge the rules draw: units, signs, lengths, the 10m and 1m minimums, the orders of validities.
_NUMBERS = st.sampled_from(["0", "1", "9", "10", "59", "60", "730", "731", "8760", ".5", "1.", "0.1", "600000000000"])
_UNITS = st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h", "d", "", "H"])
_duration_texts = st.builds(
    lambda sign, parts: sign + "".join(number + unit for number, unit in parts),
    st.sampled_from(["", "", "", "-", "+"]),
    st.lists(st.tuples(_NUMBERS, _UNITS), min_size=1, max_size=3),
)
durations_ = st.one_of(
    _duration_texts,
    st.sampled_from(["10m", "9m59s", "1m", "59s", "730h", "8760h", "0", "", "1h30m", "0" * 29 + "10m"]),
    st.integers(min_value=-1, max_value=1000),
)
_label_alphabet = "ab0-"
object_names = st.one_of(
    st.text(alphabet=_label_alphabet + ".A", min_size=1, max_size=8),
    st.sampled_from([*sorted(names.RESERVED_NAMES), "a\n"]),
    st.integers(min_value=57, max_value=60).map(lambda length: "a" * length),
)
_destination_parts = st.one_of(
    st.text(alphabet=_label_alphabet + ".", min_size=1, max_size=6),
    st.sampled_from(["a" * 63, "a" * 64, "a." * 126 + "a", "a." * 126 + "ab", "X", "a_b", "a\n"]),
)
_destination = st.fixed_dictionaries({}, optional={"name": _destination_parts, "namespace": _destination_parts})
destination_lists = st.one_of(
    st.none(),
    st.just("a string"),
    st.lists(_destination, max_size=3, unique_by=lambda item: (item.get("namespace"), item.get("name"))),
    st.sampled_from([spec.MAX_DESTINATIONS, spec.MAX_DESTINATIONS + 1]).map(destinations),
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "signingCertificateValidity": durations_,
        "servingCertificateValidity": durations_,
        "clientCertificateValidity": durations_,
        "renewBefore": durations_,
        "caCertConfigMap": destination_lists,
        "clientCertSecret": destination_lists,
        "keyAlgorithm": st.sampled_from([*(algorithm.value for algorithm in spec.KeyAlgorithm), "DSA", "rsa2048"]),
        "replicas": st.one_of(st.integers(min_value=-1, max_value=spec.MAX_REPLICAS + 1), st.just("3")),
        "deletionPolicy": st.sampled_from([*(policy.value for policy in spec.DeletionPolicy), "Orphan", "delete"]),
    },
)
objects = st.builds(
    lambda name, fields: {**ORIGINAL_EXAMPLE, "metadata": {"name": name}, "spec": fields}, object_names, specs
)


def parse_verdict(body: Body) -> list[str]:
    """The fields `spec.parse` refuses in `body` (empty when it accepts it)."""
    try:
        spec.parse(body)
    except spec.InvalidSpec as refusal:
        return [problem.field for problem in refusal.problems]
    return []
