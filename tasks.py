"""Tasks of the dual-stack Kubernetes lab: `invoke --list` shows them."""

from invoke import Collection

from lab import tasks as lab_tasks

ns = Collection()
ns.add_collection(lab_tasks.ns, name="lab")
ns.configure({"lab": dict(lab_tasks.ns.configuration()["lab"])})
