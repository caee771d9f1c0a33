"""REST and gRPC SDK, the generate command and the load generator.

Not built yet: see the open issues.
"""
