"""Root conftest: the netns harness plugins (they decide where the netns suite runs: here or in the VM)."""

pytest_plugins = ["netns_tests.harness.vmplugin", "netns_tests.harness.fixtures"]


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Soak tests (marked `soak`: the 20-switch NetworkManager run, long walks) run from scripts/soak, which sets
    IKECTL_SOAK=1; elsewhere they are deselected, and pytest's summary counts them. The guest runs exactly the
    node ids the host selected."""
    import os  # noqa: PLC0415

    if os.environ.get("IKECTL_SOAK") == "1" or os.environ.get("IKECTL_IN_GUEST") == "1":
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item not in soak]
