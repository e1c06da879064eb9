"""What the tests share, in one place.

- server: the test settings, databases cloned from the template, `start_api`/`serving`, and the
  module-wide server behind the `api` fixture (tests/conftest.py).
- database: direct SQL as the owner (`sql`, `scalar`, `rows`), `pool_drained`, and the freshly
  migrated state a module's database returns to before each test.
- calls: request ids, `expect_error`, `outcome`, ErrorInfo and BadRequest details, `create_user`.
- ledger, chat, usage: requests and shortcuts for each service's tests.
- processes: qdata servers in processes of their own, and a slow network proxy.
"""
