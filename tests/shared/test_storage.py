"""Storage on a real SeaweedFS: outputs expire like job records and inputs after a day,
whoever made the bucket."""

from __future__ import annotations

import uuid

from shared.storage import (
    INPUT_RETENTION_DAYS,
    INPUTS_RULE_ID,
    RETENTION_RULE_ID,
    Storage,
)
from tests.conftest import settings_from


def rules_of(storage: Storage) -> list[dict[str, object]]:
    answer = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)
    return list(answer["Rules"])


def fresh_storage(stack_env: dict[str, str]) -> Storage:
    return Storage(settings_from(stack_env, s3_bucket=f"easel-test-{uuid.uuid4().hex[:8]}"))


def test_a_bucket_made_by_hand_gets_the_retention_rules(stack_env: dict[str, str]) -> None:
    storage = fresh_storage(stack_env)
    storage.client.create_bucket(Bucket=storage.bucket)  # an operator's bucket, no rules
    storage.ensure_bucket()
    rules = {rule["ID"]: rule for rule in rules_of(storage)}
    assert set(rules) == {RETENTION_RULE_ID, INPUTS_RULE_ID}
    assert rules[RETENTION_RULE_ID]["Expiration"] == {"Days": storage.retention_days}
    assert rules[RETENTION_RULE_ID]["Filter"] == {"Prefix": f"{storage.prefix}/"}
    assert rules[INPUTS_RULE_ID]["Expiration"] == {"Days": INPUT_RETENTION_DAYS}
    assert rules[INPUTS_RULE_ID]["Filter"] == {"Prefix": "inputs/"}


def test_a_stale_retention_rule_is_brought_in_line_and_a_current_one_left_alone(
    stack_env: dict[str, str],
) -> None:
    storage = fresh_storage(stack_env)
    storage.client.create_bucket(Bucket=storage.bucket)
    stale = {
        "ID": RETENTION_RULE_ID, "Status": "Enabled",
        "Filter": {"Prefix": f"{storage.prefix}/"}, "Expiration": {"Days": 90},
    }  # fmt: skip
    storage.client.put_bucket_lifecycle_configuration(
        Bucket=storage.bucket, LifecycleConfiguration={"Rules": [stale]}
    )
    storage.ensure_bucket()
    days = {r["ID"]: r["Expiration"] for r in rules_of(storage)}
    assert days[RETENTION_RULE_ID] == {"Days": storage.retention_days}
    storage.ensure_bucket()  # idempotent: nothing to change the second time
    assert len(rules_of(storage)) == 2
