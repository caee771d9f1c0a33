"""Clients of the GroupDiff service: the REST and Triton SDK, `groupdiff generate`, and the load generator
(`groupdiff.clients.loadgen`) with its report, used by `groupdiff loadtest` and `groupdiff bench serve`."""
