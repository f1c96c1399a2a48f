"""The key layout: names on a single Redis as they always were, and one slot per user on Redis Cluster."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from gateway.keys import SLOTS, Keys, partition_of, partition_tags


def test_on_a_single_redis_every_name_is_the_prefix_and_its_parts() -> None:
    keys = Keys("gw")
    assert [keys.seq("4", "pnl"), keys.history("4", "pnl"), keys.channel("4"), keys.subs("4", "pnl"),
            keys.user_topics("4"), keys.conns("4"), keys.revoked("4"), keys.conn("4", "w1/s1"),
            keys.topic_of("4", "pnl"), keys.published_of("4"), keys.base_of("4")] == [
        "gw:seq:4:pnl", "gw:hist:4:pnl", "gw:u:4", "gw:subs:4:pnl", "gw:user:4", "gw:conns:4", "gw:revoked:4",
        "gw:conn:w1/s1", "gw:topic:pnl", "gw:published", "gw:"]
    assert keys.topics("pnl") == ["gw:topic:pnl"] and keys.published() == ["gw:published"]
    assert [keys.worker("w1"), keys.workers(), keys.epoch(), keys.control(), keys.layout()] == [
        "gw:worker:w1", "gw:workers", "gw:epoch", "gw:control", "gw:layout"]


@pytest.mark.parametrize("partitions", [64, 1024, 16384])
def test_each_partition_has_a_tag_in_its_own_slot_range(partitions: int) -> None:
    tags = partition_tags(partitions)
    width = SLOTS // partitions
    assert len(tags) == partitions == len(set(tags))
    assert all(key_slot(tag.encode()) // width == index for index, tag in enumerate(tags))
    assert all("{" not in tag and "}" not in tag for tag in tags)


def test_the_tags_never_change_they_are_part_of_the_data_layout() -> None:
    assert partition_tags(1024)[:6] == ("ru", "04b", "cv", "lw", "7g", "8f")
    assert partition_tags(64)[:5] == ("10", "18", "6h", "03", "29")


def test_on_a_cluster_every_key_and_the_channel_of_a_user_share_one_slot() -> None:
    keys = Keys("gw", 1024)
    for user in ("4", "42", "u-7", "alice@example.com", "9" * 64):
        names = [keys.seq(user, "pnl"), keys.history(user, "orders"), keys.channel(user), keys.subs(user, "pnl"),
                 keys.user_topics(user), keys.conns(user), keys.revoked(user), keys.conn(user, "w1/s1"),
                 keys.topic_of(user, "pnl"), keys.published_of(user)]
        slots = {key_slot(name.encode()) for name in names}
        assert len(slots) == 1, names
        (slot,) = slots
        assert slot // 16 == partition_of(user, 1024) == key_slot(user.encode()) // 16
        assert names[0] == f"gw:{{{partition_tags(1024)[partition_of(user, 1024)]}}}:seq:{user}:pnl"
    assert len(keys.topics("pnl")) == 1024 and len({key_slot(k.encode()) for k in keys.topics("pnl")}) == 1024


@pytest.mark.parametrize("partitions", [0, 3, 1000, 32768])
def test_a_partition_count_that_does_not_divide_the_slots_is_refused(partitions: int) -> None:
    with pytest.raises(ValueError):
        partition_tags(partitions)
