"""Prometheus metrics of every aiaas process: the families a service and a trainer keep (`serving`, `training`),
the HTTP endpoint that serves them with the health probes (`endpoint`), and the target files by which Prometheus
and `aiaas top` find the processes of one machine (`targets`)."""
