"""Root conftest: the netns harness plugins (they decide where the netns suite runs: here or in the VM)."""

pytest_plugins = ["netns_tests.harness.vmplugin", "netns_tests.harness.fixtures"]
