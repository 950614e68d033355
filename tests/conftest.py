pytest_plugins = ["tests.testbed.plugin", "tests.testbed.real.plugin"]
