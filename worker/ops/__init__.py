"""Running and operating the worker: the CLI, the demo, the janitor, the supervisor, logging
and Sentry."""
