"""The delivery sensor: a new (or corrected) delivery folder in the landing zone starts its ingest."""

import json

import dagster as dg

from cohort.contract import discover_deliveries, sha256_of
from pipelines.jobs import ingest_new_deliveries
from pipelines.partitions import delivery_partitions
from pipelines.resources import Locations


@dg.sensor(
    job=ingest_new_deliveries,
    minimum_interval_seconds=60,
    description="Watches COHORT_LANDING_DIR for delivery folders (a folder with a manifest.json); adds each new "
    "delivery as a partition and requests its ingest run. A changed manifest (a corrected re-delivery) runs again.",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def delivery_sensor(context: dg.SensorEvaluationContext, locations: Locations):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    new_partitions, requests = [], []
    for folder in discover_deliveries(locations.landing):
        manifest_hash = sha256_of(folder / "manifest.json")
        if seen.get(folder.name) == manifest_hash:
            continue
        if not context.instance.has_dynamic_partition(delivery_partitions.name, folder.name):
            new_partitions.append(folder.name)
        requests.append(dg.RunRequest(run_key=f"{folder.name}:{manifest_hash}", partition_key=folder.name))
        seen[folder.name] = manifest_hash
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[delivery_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
