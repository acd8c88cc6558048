"""Tasks of the dual-stack Kubernetes lab: `invoke --list` shows them."""

from lab.tasks import namespace

ns = namespace()
