"""Several REST servers on one host keep their own groupdiff_* metrics.

BentoML keeps prometheus-client's multiprocess files under its home and empties that folder whenever a server
starts, so two servers sharing the default home used to reset each other's counters. Each `groupdiff serve` now
uses a folder of its own under the home, removed when it exits.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.servers import metric_value, rest_server, tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

BODY = {"class_id": 1, "num_images": 1, "steps": 1}


def ok_requests(server) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, "groupdiff_requests_total", outcome="ok")


def generate(server, times: int) -> None:
    for _ in range(times):
        assert httpx.post(f"{server.url}/v1/generate", json=BODY).status_code == 200


def test_two_servers_on_one_host_keep_their_own_counters(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "student", kind="student")
    cache = tmp_path / "cache"
    env = {"GROUPDIFF_CACHE": str(cache), "BENTOML_HOME": None}  # both on the default home, $GROUPDIFF_CACHE/bentoml
    home = cache / "bentoml"
    with rest_server(checkpoint, env=env) as first:
        generate(first, 3)
        assert ok_requests(first) == 3
        with rest_server(checkpoint, env=env) as second:
            assert ok_requests(first) == 3 and ok_requests(second) == 0
            generate(first, 2)
            generate(second, 1)
            assert ok_requests(first) == 5 and ok_requests(second) == 1
            assert len(list(home.glob("prometheus-*"))) == 2
        assert ok_requests(first) == 5
        assert len(list(home.glob("prometheus-*"))) == 1  # the second server removed its own on exit
    assert not list(home.glob("prometheus-*"))


def test_images_are_counted_by_whether_their_group_was_full(tmp_path):
    """groupdiff_group_members_total{fill}: real members of the groups started (padding never counts)."""
    checkpoint = tiny_checkpoint(tmp_path / "student", kind="student")
    with rest_server(checkpoint, env={"GROUPDIFF_CACHE": str(tmp_path / "cache")}) as server:
        for num_images in (4, 1, 6):  # isolated, groups of 4: one full; one padded with 3; one full and one of 2
            body = {**BODY, "num_images": num_images, "group_size": 4}
            assert httpx.post(f"{server.url}/v1/generate", json=body).status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert metric_value(text, "groupdiff_group_members_total", fill="full") == 8
        assert metric_value(text, "groupdiff_group_members_total", fill="partial") == 3
