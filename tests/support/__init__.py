"""Shared test doubles and scenarios, imported by the test modules (``from support.x import …``)
and by the child interpreters that some tests start (with the tests folder on ``sys.path``)."""
