"""Job benchmark: one pass of the cert-rotation job over 1, 100 and 1,000 EtcdStorages against a real kube-apiserver,
with everything fresh (nothing to do: the common case, every minute) and with everything due (first issuance); the
cost of keys per algorithm; the job process's start-up.

    python -m bench.job               # full run (three to seven minutes, with the load of the machine)
    python -m bench.job --quick       # 1 and 5 tenants, one key per algorithm: checks that the benchmark still works
    python -m bench.job --profile     # also cProfile (CPU time) the fresh pass over the most tenants
    python -m bench.job --sizes 1,50  # other tenant counts

The control plane is the e2e harness's (testbed/harness.py): etcd and kube-apiserver on loopback, started here and
stopped at the end; kube-apiserver is built once by testbed/binaries/build-kube-apiserver.sh. The job runs in this
process, `certrotation.job.run` as `python -m certrotation` calls it, logging as in production into a discarded stream,
authenticated with the harness's admin certificate (group system:masters): no RBAC is set up, and its evaluation is
in none of the figures. Every HTTP request the job makes is counted by a `kubernetes` ApiClient whose `call_api` counts.

Each size gets its own controller namespace and tenants, each tenant its own namespace with the pre-created
destination ConfigMap and Secret; the size's EtcdStorages are deleted before the next size (nothing garbage-collects
here, but the job lists only EtcdStorages). Baselines measured in the same run: a bare list of the same EtcdStorages,
and the per-tenant cost of the 1-tenant pass. CPU is this process's CPU time (the job and its HTTP client; not the
API server's), which other work on the machine disturbs far less than wall time. Figures are printed, never
asserted; the job's exit code and its writes are checked (a fresh pass must write nothing).
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import cProfile
import dataclasses
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import kubernetes.client
import kubernetes.config

from bench.servers import ROOT, machine, table
from certrotation import job, kube, pki
from etcdstorage import names
from etcdstorage.settings import Settings
from etcdstorage.spec import KeyAlgorithm
from testbed import harness

CRD: Final = ROOT / "manifests" / "crd.yaml"
SIZE_LABEL: Final = "bench.etcdstorage/size"
SETUP_WORKERS: Final = 8  # creating the tenants' objects, not measured
ALGORITHMS: Final = tuple(KeyAlgorithm)
SERVING_CA: Final = "etcd-serving-ca"
CLIENT_CERT: Final = "etcd-client-cert"


# --- Counting what the job asks of the API server ---------------------------------------------------------------------


class CountingClient(kubernetes.client.ApiClient):
    """The `kubernetes` client `certrotation.kube` uses, counting its HTTP requests by verb."""

    def __init__(self, configuration: Any) -> None:
        super().__init__(configuration)
        self.requests: collections.Counter[str] = collections.Counter()
        self._counting = threading.Lock()  # the job's tenants overlap (ETCDSTORAGE_JOB_WORKERS)

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with self._counting:
            self.requests["LIST" if method == "GET" and "?limit=" in url else method] += 1
        return super().call_api(method, url, *args, **kwargs)


def client_for(plane: harness.ControlPlane, factory: Callable[[Any], Any] = kubernetes.client.ApiClient) -> Any:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig), client_configuration=configuration, persist_config=False
    )
    configuration.proxy = None  # loopback: never through a proxy from the environment
    return factory(configuration)


@dataclasses.dataclass(frozen=True)
class Measured:
    wall: float  # seconds
    cpu: float  # seconds of this process's CPU time
    requests: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def writes(self) -> int:
        return self.requests.get("POST", 0) + self.requests.get("PUT", 0)

    def verbs(self) -> str:
        return " ".join(f"{verb}:{count}" for verb, count in sorted(self.requests.items()))


def measure(client: CountingClient, work: Callable[[], object]) -> tuple[Measured, object]:
    client.requests.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    measured = Measured(time.perf_counter() - wall, time.process_time() - cpu, dict(client.requests))
    return measured, result


def job_pass(client: CountingClient, settings: Settings, what: str, *, writes: bool) -> Measured:
    """One `job.run`; its exit code must be 0, and a pass with nothing due must write nothing."""
    measured, code = measure(client, lambda: job.run(kube.Kubernetes(client), settings, datetime.now(UTC)))
    if code != job.EXIT_OK:
        raise RuntimeError(f"{what}: the job exited with {code}")
    if not writes and measured.writes:
        raise RuntimeError(f"{what}: a pass with nothing due wrote {measured.writes} objects")
    return measured


# --- The cluster's contents -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def control_plane() -> Iterator[harness.ControlPlane]:
    binary = harness.kube_apiserver_path()
    if not binary.is_file():
        raise SystemExit(f"no kube-apiserver at {binary}: run bash testbed/binaries/build-kube-apiserver.sh first")
    with (
        tempfile.TemporaryDirectory(prefix="etcdstorage-bench-") as scratch,
        harness.running(Path(scratch), binary) as plane,
    ):
        applied = plane.kubectl("apply", "--server-side", "--field-manager=etcdstorage-bench", f"--filename={CRD}",
                                "--output=name")  # fmt: skip
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", applied.stdout.strip())
        yield plane


def controller_namespace(plane: harness.ControlPlane, client: Any, namespace: str) -> Settings:
    """A controller namespace with the core etcd's CA and client certificate in it, and settings that use it."""
    api, upstream = kube.Kubernetes(client), plane.core.pki.proxy_client
    create_namespace(client, namespace)
    api.create(
        kube.Kind.CONFIGMAP, namespace,
        {"metadata": {"name": names.CORE_CA_CONFIGMAP}, "data": {names.CORE_CA_KEY: upstream.ca.read_text()}},
    )  # fmt: skip
    secret = {names.TLS_CRT: upstream.cert.read_bytes(), names.TLS_KEY: upstream.key.read_bytes()}
    api.create(
        kube.Kind.SECRET, namespace,
        {"metadata": {"name": names.CORE_CERT_SECRET}, "type": "kubernetes.io/tls",
         "data": {key: base64.b64encode(value).decode() for key, value in secret.items()}},
    )  # fmt: skip
    return Settings(namespace=namespace)


def tenants(client: Any, label: str, count: int, **spec: Any) -> list[str]:
    """`count` EtcdStorages, each with its API server's namespace and the empty destination ConfigMap and Secret its
    operator pre-creates (manifests/examples/apiserver-rbac.yaml)."""
    api, custom = kube.Kubernetes(client), kubernetes.client.CustomObjectsApi(client)

    def create(index: int) -> str:
        name = f"{label}-{index:04d}"
        create_namespace(client, name)
        api.create(kube.Kind.CONFIGMAP, name, {"metadata": {"name": SERVING_CA}})
        api.create(
            kube.Kind.SECRET, name,
            {"metadata": {"name": CLIENT_CERT}, "type": "kubernetes.io/tls",
             "data": {names.TLS_CRT: "", names.TLS_KEY: ""}},
        )  # fmt: skip
        storage = {
            "apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": name, "labels": {SIZE_LABEL: label}},
            "spec": {
                "caCertConfigMap": [{"name": SERVING_CA, "namespace": name}],
                "clientCertSecret": [{"name": CLIENT_CERT, "namespace": name}],
                **spec,
            },
        }  # fmt: skip
        custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.PLURAL, storage, _preload_content=False)
        return name

    with concurrent.futures.ThreadPoolExecutor(SETUP_WORKERS) as pool:
        return list(pool.map(create, range(count)))  # list(): raises the first failure


def create_namespace(client: Any, name: str) -> None:
    body = kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
    kubernetes.client.CoreV1Api(client).create_namespace(body=body, _preload_content=False)


def remove_tenants(client: Any, label: str) -> None:
    kubernetes.client.CustomObjectsApi(client).delete_collection_cluster_custom_object(
        names.GROUP, names.VERSION, names.PLURAL, label_selector=f"{SIZE_LABEL}={label}", _preload_content=False
    )


# --- Measurements -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SizeResult:
    size: int
    bare_list: Measured
    due: Measured
    fresh: Measured
    gets: Measured  # what-if: the fresh pass's reads in the controller namespace, as GETs
    lists: Measured  # what-if: the same objects by LIST
    due_alone: Measured  # baseline: the due pass over as many new tenants, one tenant at a time


def one_size(
    plane: harness.ControlPlane, setup: Any, counting: CountingClient, size: int, *, repeats: int,
    profile: cProfile.Profile | None,
) -> SizeResult:  # fmt: skip
    label = f"b{size}"
    settings = controller_namespace(plane, setup, f"bench-{label}")
    tenant_names = tenants(setup, label, size)
    api = kube.Kubernetes(counting)
    bare = min((measure(counting, api.list_etcdstorages)[0] for _ in range(max(3, repeats))), key=lambda m: m.wall)
    due = job_pass(counting, settings, f"due pass over {size}", writes=True)
    fresh = min(
        (job_pass(counting, settings, f"fresh pass over {size}", writes=False) for _ in range(repeats)),
        key=lambda m: m.wall,
    )
    if profile is not None:
        profile.enable()
        job_pass(counting, settings, f"profiled fresh pass over {size}", writes=False)
        profile.disable()
    gets, lists = controller_reads(counting, settings.namespace, tenant_names)
    remove_tenants(setup, label)
    tenants(setup, f"{label}a", size)  # as many new tenants again, for the one-at-a-time baseline
    alone = dataclasses.replace(settings, job_workers=1)
    due_alone = job_pass(counting, alone, f"due pass over {size}, one at a time", writes=True)
    remove_tenants(setup, f"{label}a")
    return SizeResult(size, bare, due, fresh, gets, lists, due_alone)


class Listing(kube.Kubernetes):
    """`certrotation.kube` with the paged LIST of a namespace's ConfigMaps or Secrets it could have (it has not: see
    `controller_reads`), through the same request path as its GETs."""

    def list_all(self, kind: kube.Kind, namespace: str) -> int:
        found, token = 0, ""
        while True:
            query = f"?limit={kube.LIST_PAGE}" + (f"&continue={quote(token)}" if token else "")
            page = self._request("GET", f"/api/v1/namespaces/{namespace}/{kind.lower()}s{query}")
            found += len(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return found


def controller_reads(client: CountingClient, namespace: str, tenant_names: list[str]) -> tuple[Measured, Measured]:
    """What the fresh pass reads in the controller namespace (each tenant's signer, server certificate and CA
    ConfigMap), GET by GET as the job does, against a paged LIST of the namespace's Secrets and ConfigMaps."""
    api = Listing(client)

    def get_each() -> None:
        for tenant in tenant_names:
            api.get(kube.Kind.SECRET, namespace, names.signer_secret(tenant))
            api.get(kube.Kind.SECRET, namespace, names.server_cert_secret(tenant))
            api.get(kube.Kind.CONFIGMAP, namespace, names.client_ca_configmap(tenant))

    def list_all() -> None:
        listed = api.list_all(kube.Kind.SECRET, namespace) + api.list_all(kube.Kind.CONFIGMAP, namespace)
        if listed < 3 * len(tenant_names):
            raise RuntimeError(f"listed {listed} objects in {namespace}, expected at least {3 * len(tenant_names)}")

    return measure(client, get_each)[0], measure(client, list_all)[0]


def pass_rows(results: list[SizeResult]) -> list[list[object]]:
    rows: list[list[object]] = []
    one = {"fresh": results[0].fresh.wall / results[0].size, "due": results[0].due.wall / results[0].size}
    for result in results:
        for kind, measured in (("fresh", result.fresh), ("due", result.due)):
            per_tenant = measured.wall / result.size
            rows.append([
                result.size, kind, f"{measured.wall:.2f}", f"{per_tenant * 1e3:.1f}",
                f"{measured.cpu / result.size * 1e3:.1f}", measured.total, measured.verbs(),
                f"{measured.total / result.size:.1f}", f"{result.bare_list.wall * 1e3:.1f}",
                f"{measured.wall / result.bare_list.wall:.0f}", f"{per_tenant / one[kind]:.2f}",
            ])  # fmt: skip
    return rows


def worker_rows(results: list[SizeResult]) -> list[list[object]]:
    return [
        [result.size, f"{result.due.wall:.2f}", f"{result.due_alone.wall:.2f}",
         f"{result.due_alone.wall / result.due.wall:.1f}"]
        for result in results
    ]  # fmt: skip


def read_rows(results: list[SizeResult]) -> list[list[object]]:
    return [
        [result.size, result.gets.total, f"{result.gets.wall:.2f}", f"{result.gets.cpu:.2f}", result.lists.total,
         f"{result.lists.wall:.2f}", f"{result.lists.cpu:.2f}", f"{result.lists.wall / result.gets.wall:.2f}"]
        for result in results
    ]  # fmt: skip


def key_generation(algorithms: tuple[KeyAlgorithm, ...], keys: int, budget: float) -> list[list[object]]:
    """Per algorithm: generate up to `keys` keys, stopping early once `budget` seconds are spent (at least one)."""
    rows: list[list[object]] = []
    first = 0.0
    for algorithm in algorithms:
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < keys and (not times or time.perf_counter() - started < budget):
            began = time.process_time()
            pki.new_key(algorithm)
            times.append(time.process_time() - began)
        median = statistics.median(times)
        first = first or median
        rows.append([algorithm.value, len(times), f"{median * 1e3:.3f}", f"{max(times) * 1e3:.1f}",
                     f"{median / first:.0f}"])  # fmt: skip
    return rows


def first_issuance(
    plane: harness.ControlPlane, setup: Any, counting: CountingClient, algorithms: tuple[KeyAlgorithm, ...]
) -> list[list[object]]:
    """One tenant's first pass (two CAs, a serving and a client certificate: four keys) per key algorithm."""
    rows: list[list[object]] = []
    first = 0.0
    for algorithm in algorithms:
        label = f"k{algorithm.value.lower()}"
        settings = controller_namespace(plane, setup, f"bench-{label}")
        tenants(setup, label, 1, keyAlgorithm=algorithm.value)
        due = job_pass(counting, settings, f"first issuance with {algorithm.value}", writes=True)
        first = first or due.wall
        rows.append([algorithm.value, f"{due.wall * 1e3:.0f}", f"{due.cpu * 1e3:.0f}", due.total,
                     f"{due.wall / first:.1f}"])  # fmt: skip
        remove_tenants(setup, label)
    return rows


def start_up(runs: int) -> list[list[object]]:
    """The job's process as the CronJob starts one every minute (interpreter and imports) against a bare interpreter."""

    def best(code: str) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            times.append(time.perf_counter() - started)
        return min(times)

    bare, imports = best("pass"), best("import certrotation.job")
    return [["python -c pass", f"{bare * 1e3:.0f}", "1.0"],
            ["python -c 'import certrotation.job'", f"{imports * 1e3:.0f}", f"{imports / bare:.1f}"]]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: check that it runs, figures mean little")
    parser.add_argument("--profile", action="store_true", help="cProfile the fresh pass over the most tenants")
    parser.add_argument("--sizes", help="comma-separated tenant counts instead of 1,100,1000 (1,5 with --quick)")
    args = parser.parse_args()
    sizes, repeats, keys, budget, runs = ([1, 5], 1, 1, 0.0, 1) if args.quick else ([1, 100, 1000], 3, 50, 10.0, 5)
    if args.sizes:
        sizes = sorted({int(size) for size in args.sizes.split(",")})
    algorithms = ALGORITHMS[:2] if args.quick else ALGORITHMS  # an RSA 4096 key alone can take seconds
    profile = cProfile.Profile(time.process_time) if args.profile else None
    job.configure_logging(io.StringIO())  # INFO lines formatted as in production, then dropped
    version = harness.kube_apiserver_path().name.removeprefix("kube-apiserver-")
    print(machine())
    with control_plane() as plane:
        setup, counting = client_for(plane), client_for(plane, CountingClient)
        # Warm-up, not measured: the first pass of a process pays for lazy initialisation (connections, libraries).
        settings = controller_namespace(plane, setup, "bench-warm-up")
        tenants(setup, "warm-up", 1)
        job_pass(counting, settings, "warm-up pass", writes=True)
        remove_tenants(setup, "warm-up")
        results = [
            one_size(plane, setup, counting, size, repeats=repeats, profile=profile if size == sizes[-1] else None)
            for size in sizes
        ]
        issuance = first_issuance(plane, setup, counting, algorithms)
    print()
    title = (f"One job pass, in-process, against kube-apiserver {version} on loopback, admin credentials (no RBAC set "
             f"up); fresh: best of {repeats}")  # fmt: skip
    header = ["tenants", "pass", "wall s", "ms/tenant", "CPU ms/tenant", "requests", "by verb", "req/tenant",
              "bare list ms", "× list", "× 1-tenant"]  # fmt: skip
    print(table(title, header, pass_rows(results)))
    print("  × list: over a bare list of the same EtcdStorages; × 1-tenant: per-tenant wall time over the 1-tenant "
          "pass's")  # fmt: skip
    print()
    workers = Settings().job_workers
    title = (f"The due pass (every tenant new) with {workers} tenants at a time (ETCDSTORAGE_JOB_WORKERS, the "
             "default) against one at a time, each over its own new tenants")  # fmt: skip
    header = ["tenants", f"{workers} at a time s", "one at a time s", "speed-up"]
    print(table(title, header, worker_rows(results)))
    print()
    title = ("The fresh pass's reads in the controller namespace (each tenant's signer, server certificate, CA "
             "ConfigMap): one GET each, as the job did before, against the paged LISTs it does now")  # fmt: skip
    header = ["tenants", "GETs", "GET wall s", "GET CPU s", "LISTs", "LIST wall s", "LIST CPU s", "LIST/GET wall"]
    print(table(title, header, read_rows(results)))
    print()
    header = ["algorithm", "keys", "median CPU ms", "max CPU ms", "× " + algorithms[0].value]
    print(table("Key generation (certrotation.pki.new_key), per key", header, key_generation(algorithms, keys, budget)))
    print()
    header = ["algorithm", "wall ms", "CPU ms", "requests", "× " + algorithms[0].value]
    print(table("A tenant's first issuance (4 keys: 2 CAs, serving and client certificate)", header, issuance))
    print()
    header = ["process", f"best of {runs} ms", "ratio"]
    print(table("Job process start-up (the CronJob starts one every minute)", header, start_up(runs)))
    if profile is not None:
        print()
        print(f"cProfile (CPU time) of a fresh pass over {sizes[-1]} tenants, by own time:")
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    print()
    print(machine(prefix="after"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
