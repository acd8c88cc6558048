"""Defaults, then one validation: every check of the configuration runs when it is loaded,
before any task makes anything, and fills nothing the defaults did not."""

from __future__ import annotations

import dataclasses

import pytest

from lab import config, lbplan, profiles
from lab.config import ConfigError
from lab.defaults import fill_defaults, merged_settings
import test_bad_input
from test_bad_input import invoke, tree

project = test_bad_input.project  # the fixture: a copy of tasks.py, an environment without INVOKE_*
ONE_ADDRESS_V6 = "fd00:db1::240-fd00:db1::240"


def problems_of(settings):
    with pytest.raises(ConfigError) as info:
        config.load(settings)
    return info.value.problems


def with_profile(monkeypatch, **changes):
    """``current`` with ``changes``, known to the loader under its (possibly new) name."""
    profile = dataclasses.replace(profiles.CURRENT, **changes)
    monkeypatch.setitem(profiles.PROFILES, profile.name, profile)
    return profile


# ----------------------------------------------------------------- one validation, before anything


def test_a_metallb_range_short_of_addresses_is_refused_alike_by_every_task_before_anything_is_made(project):
    cwd, env = project
    # The libvirt test driver: were anything to reach a step, it would touch no real libvirt.
    env = dict(env, INVOKE_LAB_METALLB_IPV6_RANGE=ONE_ADDRESS_V6, INVOKE_LAB_LIBVIRT_URI="test:///default")
    needed = len(lbplan.lb_needs(profiles.CURRENT)[6])
    before = tree(cwd)
    seen = {}
    for task in ("lab.config", "lab.render", "lab.up"):
        result = invoke(cwd, env, task)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (task, output)
        assert "Traceback" not in output and result.stdout == "", (task, output)
        assert tree(cwd) == before and not (cwd / "st").exists(), (task, "made something")
        seen[task] = result.stderr.splitlines()
    assert seen["lab.config"] == seen["lab.render"] == seen["lab.up"], seen
    (line,) = seen["lab.config"]
    assert line.startswith(f"lab.metallb_ipv6_range: {ONE_ADDRESS_V6} holds 1 address(es) but {needed} "), line
    assert line.endswith(f"widen it to at least {needed} addresses"), line


def test_the_load_balancer_addresses_are_checked_with_every_other_setting():
    problems = problems_of({"metallb_ipv6_range": ONE_ADDRESS_V6, "cpus": "many"})
    assert {p.split(":")[0] for p in problems} == {"lab.metallb_ipv6_range", "lab.cpus"}, problems


def test_a_range_is_checked_against_what_the_profile_asks_of_it(monkeypatch):
    # Dual-stack Services with the IPv6DualStack gate still needed (Kubernetes 1.20-1.22):
    # the RequireDualStack LoadBalancer takes a second IPv6 address.
    with_profile(monkeypatch, name="gated", dual_stack_feature_gate=True, dual_stack_services=True)
    assert [p.split(":")[0] for p in problems_of({"profile": "gated", "metallb_ipv6_range": ONE_ADDRESS_V6})] == [
        "lab.metallb_ipv6_range"]
    # Without dual-stack Services one IPv6 address is enough (as on seed-2020).
    with_profile(monkeypatch, name="single", dual_stack_services=False)
    cfg = config.load({"profile": "single", "metallb_ipv6_range": ONE_ADDRESS_V6})
    assert set(lbplan.lb_addresses(cfg)) == {lbplan.SVC_IPV6_LOCAL}


# ----------------------------------------------------------------- defaults apart from validation


def test_validation_fills_nothing():
    with pytest.raises(ConfigError) as info:
        config.validate(merged_settings({}))
    assert {p.split(":")[0] for p in info.value.problems} == {"lab.runtime", "lab.box", "lab.nodes", "lab.cache_dir"}
    assert config.validate(fill_defaults(merged_settings({}))) == config.load({})


@pytest.mark.parametrize("profile", list(profiles.PROFILES.values()), ids=lambda p: p.name)
def test_the_defaults_fill_what_the_user_did_not_set_from_the_profile(profile):
    filled = fill_defaults(merged_settings({"profile": profile.name}))
    assert filled["runtime"] == profile.runtimes[0]
    assert (filled["box"], filled["box_url"]) == (profile.box, profile.box_url)
    assert [(n["name"], n["role"]) for n in filled["nodes"]] == [
        ("k8s-master01", "control-plane"), ("k8s-worker01", "worker"), ("k8s-worker02", "worker")]
    cfg = config.load({"profile": profile.name})
    assert [(str(n.ipv4), str(n.ipv6)) for n in cfg.nodes] == [(n["ipv4"], n["ipv6"]) for n in filled["nodes"]]


def test_the_defaults_keep_what_the_user_set():
    nodes = [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"},
             {"name": "w1", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]
    given = merged_settings({"box": "my/box", "runtime": "containerd", "nodes": nodes, "workers": 5})
    copy = dict(given)
    filled = fill_defaults(given)
    assert given == copy  # a new dict; the settings given are not changed
    assert (filled["box"], filled["box_url"], filled["runtime"], filled["nodes"]) == ("my/box", None, "containerd", nodes)
    only_url = fill_defaults(merged_settings({"box_url": "https://example.invalid/a.box"}))
    assert (only_url["box"], only_url["box_url"]) == (profiles.CURRENT.box, "https://example.invalid/a.box")


def test_a_default_that_cannot_be_derived_is_left_to_the_validation_of_its_cause():
    settings = {"profile": "nope", "network_ipv4": "not-a-network"}
    filled = fill_defaults(merged_settings(settings))
    assert (filled["runtime"], filled["box"], filled["nodes"]) == (None, None, None)
    assert {p.split(":")[0] for p in problems_of(settings)} == {"lab.profile", "lab.network_ipv4"}


# ----------------------------------------------------------------- what the profile can do


def test_nftables_is_refused_where_the_profile_has_no_nftables_mode(monkeypatch):
    with_profile(monkeypatch, kube_proxy_modes=("ipvs",))
    (problem,) = problems_of({"kube_proxy_mode": "nftables"})
    assert problem.startswith("lab.kube_proxy_mode: 'nftables' is not available on profile current"), problem
    assert problem.endswith("use 'ipvs'"), problem


def test_nftables_is_taken_by_any_profile_that_has_it(monkeypatch):
    with_profile(monkeypatch, name="newer")
    assert config.load({"profile": "newer", "kube_proxy_mode": "nftables"}).kube_proxy_mode == "nftables"
    (problem,) = problems_of({"profile": "seed-2020", "kube_proxy_mode": "nftables"})
    assert problem.startswith("lab.kube_proxy_mode: 'nftables' is not available on profile seed-2020"), problem
