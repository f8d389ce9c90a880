"""The control plane: which candidates are on trial, the decisions on them, the admin port.

Modules: registry (entries, snapshots, changes, validation), registry_store (the registry
in Redis, atomic changes), seeding (the config file into the registry), pool (a runner
for each entry), sync (live primary and mirrors on every replica), decisions (promote,
reject, rollback), trials (time boxes, gate automation), reports (analysis.report in
a thread), admin (the admin API), admin_guard and
auth (who may call it), openapi (the route table and its document).
It imports the data plane's types (proxy.routing, proxy.runner), never the process that
composes both (proxy.app, proxy.server); tests/test_layout.py checks both directions.
"""
