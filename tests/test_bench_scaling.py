"""`bench scaling` on fake CPU devices: one row per device count, the batch split over the mesh."""

import jax
import pytest

from liteframe_jax.bench import scaling


def test_device_counts_are_powers_of_two_up_to_all():
    assert scaling.device_counts(1) == [1]
    assert scaling.device_counts(6) == [1, 2, 4]
    assert scaling.device_counts(8) == [1, 2, 4, 8]


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs several (fake) devices")
def test_weak_scaling_rows_cover_the_device_counts():
    counts = [1, 2]  # the batch split over every device in use
    rows = list(scaling.bench_scaling(1e12, small=True, impl=None, counts=counts))
    assert [r["devices"] for r in rows] == counts and not any("error" in r for r in rows), rows
    assert [r["batch"] for r in rows] == counts  # one clip per device in --small
    assert [r["batch_devices"] for r in rows] == counts  # the real step's batch is split over the devices in use
    assert rows[0]["efficiency"] == pytest.approx(1.0)
    assert all(r["samples_per_s"] > 0 and r["step_gib_per_device"] > 0 for r in rows)
